"""Modular addition: the dataset, the Gromov (2023) MLP and a training loop with checkpoints.

The task is ``(a, b) -> (a + b) mod p`` over all ``p * p`` pairs. The MLP is the one of
Gromov, "Grokking modular arithmetic" (2023), as the eNTK paper's code runs it: input
``concat(one_hot(a), one_hot(b))``, a bias-free linear layer scaled by ``1/sqrt(2p)``, the
activation ``x**2`` and a bias-free readout scaled by ``1/width``, all weights ``N(0, 1)``.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checks
from .cache import cached


def check_modulus(p: int) -> int:
    """Return ``p`` if it is an odd prime, else raise ``ValueError`` saying why."""
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
        raise ValueError(f"modulus p must be an odd prime integer, got {p!r}")
    p = int(p)
    if p < 3 or p % 2 == 0 or any(p % d == 0 for d in range(3, math.isqrt(p) + 1, 2)):
        raise ValueError(f"modulus p must be an odd prime (3, 5, 7, 11, ...), got {p}")
    return p


def modular_addition_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of Z_p and their sums.

    Returns
    -------
    pairs : (p*p, 2) long tensor, row ``a * p + b`` holds ``(a, b)``.
    labels : (p*p,) long tensor, ``(a + b) mod p``.
    """
    p = check_modulus(p)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    return pairs, (pairs[:, 0] + pairs[:, 1]) % p


def one_hot_pairs(pairs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, 2) pairs -> (N, 2p) float inputs ``concat(one_hot(a), one_hot(b))``."""
    return torch.cat([F.one_hot(pairs[:, 0], p), F.one_hot(pairs[:, 1], p)], dim=1).float()


SPLITS = ("paper", "seeded")


def _check_split_size(n: int, train_frac: float) -> None:
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must lie strictly between 0 and 1, got {train_frac}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to split, got n={n}")


def train_test_split(n: int, train_frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split of ``range(n)`` into sorted train and test index arrays.

    ``round(train_frac * n)`` indices go to train; the permutation is drawn with
    ``numpy.random.default_rng(seed)``: a different split for every seed.
    """
    _check_split_size(n, train_frac)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = min(max(int(round(train_frac * n)), 1), n - 1)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def paper_split(n: int, train_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The eNTK paper's fixed split of ``range(n)``, the same for every seed.

    The authors' Transformer code lists the ``p * p`` examples in row-major order (index
    ``a * p + b``), shuffles the list with Python's ``random.seed(0); random.shuffle``, and
    trains on the first ``int(train_frac * n)``. A local ``random.Random(0)`` draws the same
    permutation without touching the global generator. Both arrays keep the shuffled order
    (the order the authors' training list has); as sets they are the authors' split.
    """
    _check_split_size(n, train_frac)
    order = list(range(n))
    random.Random(0).shuffle(order)
    n_train = min(max(int(train_frac * n), 1), n - 1)
    return np.asarray(order[:n_train]), np.asarray(order[n_train:])


def split_indices(n: int, train_frac: float, split: str, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of ``range(n)`` under a split policy.

    split : ``"paper"`` (:func:`paper_split`: the authors' one fixed split, ``split_seed``
        is ignored) or ``"seeded"`` (:func:`train_test_split` with ``split_seed``).
    """
    if split == "paper":
        return paper_split(n, train_frac)
    if split == "seeded":
        return train_test_split(n, train_frac, split_seed)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class GromovMLP(nn.Module):
    """The 1-hidden-layer MLP of Gromov (2023): ``W2 (W1 x / sqrt(2p))**2 / width``.

    Input (N, 2p) one-hot pairs; output (N, p) logits. ``fc1`` and ``fc2`` are plain
    bias-free ``nn.Linear`` layers (so the fast eNTK path applies); the scalings are
    applied outside them.
    """

    def __init__(self, p: int, width: int = 512):
        super().__init__()
        self.init_args = dict(p=p, width=width)
        self.p = check_modulus(p)
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        self.width = int(width)
        self.fc1 = nn.Linear(2 * p, width, bias=False)
        self.fc2 = nn.Linear(width, p, bias=False)
        for layer in (self.fc1, self.fc2):
            nn.init.normal_(layer.weight, mean=0.0, std=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x) / math.sqrt(2 * self.p)
        return self.fc2(h**2) / self.width


@dataclass
class TrainResult:
    """What :func:`train` returns.

    history : one row per evaluated epoch with ``epoch, train_loss, train_acc, test_loss,
        test_acc`` (epoch 0 is the initial model).
    checkpoints : ``{epoch: state_dict}`` every ``checkpoint_every`` epochs, plus the first
        and the last.
    """

    history: pd.DataFrame
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def final_state(self) -> dict[str, torch.Tensor]:
        return self.checkpoints[max(self.checkpoints)]

    def to_dict(self) -> dict:
        """Plain containers only, so it round-trips through ``torch.load(weights_only=True)``."""
        return {"history": self.history.to_dict("list"), "checkpoints": self.checkpoints}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainResult":
        return cls(history=pd.DataFrame(d["history"]), checkpoints=dict(d["checkpoints"]))


def _loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return F.mse_loss(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))
    return F.cross_entropy(logits, y)


@torch.no_grad()
def _evaluate(model, x, y, loss, n_classes):
    logits = model(x)[..., :n_classes]
    return _loss(logits, y, loss).item(), (logits.argmax(-1) == y).float().mean().item()


def train(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.01,
    loss: str = "mse",
    batch_size: int | None = None,
    checkpoint_every: int = 10,
    n_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` with AdamW, recording accuracy curves and checkpoints.

    Parameters
    ----------
    inputs : (N, ...) model inputs for all examples; labels : (N,) class indices.
    train_idx, test_idx : index arrays into ``inputs``.
    epochs : passes over the training set. With ``batch_size=None`` (full batch) an epoch
        is one optimiser step.
    loss : ``"mse"`` (against one-hot targets) or ``"cross_entropy"``.
    n_classes : only the first ``n_classes`` logits count in loss and accuracy (default:
        all); lets a model with extra output tokens be scored over the answers only.
    seed : seeds the minibatch shuffling.

    Returns a :class:`TrainResult` whose checkpoints are CPU copies of ``state_dict``.
    """
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {loss!r}")
    checks.training(epochs=epochs, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every, seed=seed,
                    batch_size=batch_size)
    checks.integer("n_classes", n_classes, minimum=1, allow_none=True)
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)} rows) and labels ({len(labels)}) must have one row per example")
    for name, idx in (("train_idx", train_idx), ("test_idx", test_idx)):
        if len(idx) == 0 or int(np.min(idx)) < 0 or int(np.max(idx)) >= len(inputs):
            raise ValueError(f"{name} must be a non-empty array of indices in 0..{len(inputs) - 1}, got {len(idx)} "
                             f"indices" + (f" in {int(np.min(idx))}..{int(np.max(idx))}" if len(idx) else ""))
    if device is not None:
        checks.torch_device("device", device)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    x_train, y_train = inputs[train_idx].to(device), labels[train_idx].to(device)
    x_test, y_test = inputs[test_idx].to(device), labels[test_idx].to(device)
    n_classes = n_classes or int(labels.max()) + 1
    n_train = len(train_idx)
    batch_size = n_train if batch_size is None else int(batch_size)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    rows, checkpoints = [], {}

    def record(epoch):
        model.eval()
        train_loss, train_acc = _evaluate(model, x_train, y_train, loss, n_classes)
        test_loss, test_acc = _evaluate(model, x_test, y_test, loss, n_classes)
        rows.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                         test_loss=test_loss, test_acc=test_acc))
        if epoch % checkpoint_every == 0 or epoch == epochs:
            checkpoints[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        model.train()

    record(0)
    # mininterval: a notebook front end receives one message per update; keep them few
    for epoch in tqdm(range(1, epochs + 1), desc="training", disable=not progress, mininterval=1.0):
        order = torch.randperm(n_train, generator=generator) if batch_size < n_train else torch.arange(n_train)
        for start in range(0, n_train, batch_size):
            batch = order[start:start + batch_size].to(device)
            optimiser.zero_grad(set_to_none=True)
            logits = model(x_train[batch])[..., :n_classes]
            _loss(logits, y_train[batch], loss).backward()
            optimiser.step()
        record(epoch)
    model.eval()
    return TrainResult(history=pd.DataFrame(rows), checkpoints=checkpoints)


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A fresh, untrained model of the same architecture and size, initialised under ``seed``
    (on the same device, eval mode): the kernel "with the data but not the learned features"."""
    if not hasattr(model, "init_args"):
        raise ValueError(f"{type(model).__name__} does not record its constructor arguments (init_args)")
    fresh = _seeded(lambda: type(model)(**model.init_args), seed)
    return fresh.to(next(model.parameters()).device).eval()


def model_at(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with the given checkpoint loaded, in eval mode."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(state_dict)
    return clone.eval()


@dataclass
class ModularRun:
    """A trained modular-addition model with its data: what the notebooks analyse.

    pairs (N, 2) and labels (N,) over all p*p pairs; inputs (N, ...) what the model reads;
    train_idx / test_idx index arrays; result the curves and checkpoints; model the final
    model (eval mode).
    """

    p: int
    pairs: torch.Tensor
    labels: torch.Tensor
    inputs: torch.Tensor
    train_idx: np.ndarray
    test_idx: np.ndarray
    result: TrainResult
    model: nn.Module


def train_gromov_mlp(
    p: int = 29,
    width: int = 512,
    steps: int = 500,
    *,
    seed: int = 0,
    split: str = "seeded",
    split_seed: int = 0,
    train_frac: float = 0.7,
    lr: float = 0.05,
    weight_decay: float = 0.01,
    checkpoint_every: int = 10,
    cache_dir=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ModularRun:
    """Train the Gromov MLP on modular addition as the eNTK paper's code does.

    Full-batch AdamW on MSE against one-hot targets; ``seed`` seeds the weights; ``split``
    chooses the train/test split (:func:`split_indices`: ``"seeded"`` draws it with
    ``split_seed``, ``"paper"`` is the Transformer code's fixed split). The result is cached
    in ``cache_dir`` (keyed by every argument that changes it) so re-running a notebook does
    not retrain.
    """
    checks.mlp_arguments(p=p, width=width, steps=steps, seed=seed, split=split, split_seed=split_seed,
                         train_frac=train_frac, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every,
                         device=device, cache_dir=cache_dir)
    p = check_modulus(p)
    pairs, labels = modular_addition_pairs(p)
    inputs = one_hot_pairs(pairs, p)
    train_idx, test_idx = split_indices(len(pairs), train_frac, split, split_seed)
    model = _seeded(lambda: GromovMLP(p, width), seed)

    key = dict(p=p, width=width, steps=steps, seed=seed, split=split,
               split_seed=split_seed if split == "seeded" else None, train_frac=train_frac,
               lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every)
    return _cached_run("gromov_mlp", key, model, p, pairs, labels, inputs, train_idx, test_idx, cache_dir,
                       epochs=steps, lr=lr, weight_decay=weight_decay, loss="mse",
                       checkpoint_every=checkpoint_every, device=device, progress=progress)


def _cached_run(name, key, model, p, pairs, labels, inputs, train_idx, test_idx, cache_dir, code=(), **train_kwargs):
    """Train (or read back from ``cache_dir``, keyed by ``key`` and by the source of
    :func:`training_code`, the model's class and ``code``), load the final weights and bundle
    everything as a :class:`ModularRun`."""
    result = TrainResult.from_dict(cached(
        cache_dir, name, lambda: train(model, inputs, labels, train_idx, test_idx, **train_kwargs).to_dict(),
        produced_by=(*training_code(), type(model), *code), **key, torch=torch.__version__,
    ))
    model.load_state_dict(result.final_state())
    return ModularRun(p, pairs, labels, inputs, train_idx, test_idx, result, model.to(train_kwargs["device"]).eval())


def _seeded(make, seed: int):
    """Build a module under ``torch.manual_seed(seed)`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def training_code() -> tuple:
    """What a cached training run depends on besides its arguments and its model class: the
    training loop, the data and split functions and the seeded construction (looked up when
    called, so the cache follows the code this process runs)."""
    return (train, _loss, _evaluate, TrainResult, modular_addition_pairs, one_hot_pairs, split_indices, paper_split,
            train_test_split, _seeded)


class OneLayerTransformer(nn.Module):
    """The 1-layer Transformer of the grokking literature (Nanda et al. 2023), as the eNTK
    paper's code runs it on modular addition.

    Tokens ``(a, b, "=")`` with ``"=" = p``, vocabulary ``p + 1``; learned token and
    position embeddings; ``n_heads`` causal attention heads; a ReLU MLP; no LayerNorm and no
    biases; an untied unembedding read at the last position. Input (N, 3) token ids, output
    (N, p + 1) logits.

    Every weight is an ``nn.Linear`` or ``nn.Embedding`` named as in the paper (``W_E``,
    ``W_pos``, ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``W_in``, ``W_out``, ``W_U``), so each has
    a fast layerwise eNTK. ``W_Q``, ``W_K``, ``W_V`` hold all heads: their weight is the
    paper's ``(heads, d_head, d_model)`` tensor reshaped to ``(heads * d_head, d_model)``.
    Initialisation: ``W_E``, ``W_pos``, ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``W_out`` ~
    N(0, 1/d_model); ``W_in`` ~ N(0, 1/d_mlp); ``W_U`` ~ N(0, 1/d_vocab).
    """

    WEIGHTS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U")

    def __init__(self, p: int = 29, d_model: int = 64, n_heads: int = 4, d_mlp: int = 256, n_ctx: int = 3):
        super().__init__()
        self.init_args = dict(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, n_ctx=n_ctx)
        self.p = check_modulus(p)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_vocab, self.n_heads, self.d_head = p + 1, n_heads, d_model // n_heads
        self.W_E = nn.Embedding(self.d_vocab, d_model)
        self.W_pos = nn.Embedding(n_ctx, d_model)
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.W_in = nn.Linear(d_model, d_mlp, bias=False)
        self.W_out = nn.Linear(d_mlp, d_model, bias=False)
        self.W_U = nn.Linear(d_model, self.d_vocab, bias=False)
        std = {"W_in": d_mlp**-0.5, "W_U": self.d_vocab**-0.5}
        for name in self.WEIGHTS:
            nn.init.normal_(getattr(self, name).weight, std=std.get(name, d_model**-0.5))
        self.register_buffer("causal_mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False)

    def attention_pattern(self, x: torch.Tensor) -> torch.Tensor:
        """(N, heads, T, T) attention weights of residual stream ``x`` (N, T, d_model)."""
        n, t, _ = x.shape
        q = self.W_Q(x).view(n, t, self.n_heads, self.d_head).transpose(1, 2)
        k = self.W_K(x).view(n, t, self.n_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        return scores.masked_fill(~self.causal_mask[:t, :t], float("-inf")).softmax(-1)

    def forward(self, tokens: torch.Tensor, return_mlp: bool = False):
        n, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).expand(n, t)
        x = self.W_E(tokens) + self.W_pos(positions)
        v = self.W_V(x).view(n, t, self.n_heads, self.d_head).transpose(1, 2)
        z = (self.attention_pattern(x) @ v).transpose(1, 2).reshape(n, t, -1)
        x = x + self.W_O(z)
        mlp = torch.relu(self.W_in(x))
        x = x + self.W_out(mlp)
        logits = self.W_U(x[:, -1])
        return (logits, mlp[:, -1]) if return_mlp else logits


TRANSFORMER_INITS = ("paper", "torch")


@torch.no_grad()
def paper_transformer_init(model: OneLayerTransformer, seed: int) -> OneLayerTransformer:
    """Draw ``model``'s weights as the eNTK paper's code does, in place; returns ``model``.

    ``torch.manual_seed(seed)``, then one ``torch.randn`` per weight in the order
    ``W_E (vocab, d), W_pos (ctx, d), W_Q, W_K, W_V (heads, d_head, d), W_O (d, heads *
    d_head), W_in (d, d_mlp), W_out (d_mlp, d), W_U (d, vocab)``, each divided by the
    square root stated in :class:`OneLayerTransformer` and copied into our layout
    (``W_in``, ``W_out`` and ``W_U`` are drawn as (in, out), the transpose of
    ``nn.Linear.weight``). The global random state is restored afterwards. With the paper's
    split, seed 2 then grows the paper's seed-2 network (key frequencies 1 and 12).
    """
    d_model, d_mlp, vocab = model.W_Q.in_features, model.W_in.out_features, model.d_vocab
    shapes = {"W_E": (vocab, d_model), "W_pos": tuple(model.W_pos.weight.shape),
              "W_Q": (model.n_heads, model.d_head, d_model), "W_K": (model.n_heads, model.d_head, d_model),
              "W_V": (model.n_heads, model.d_head, d_model), "W_O": (d_model, d_model),
              "W_in": (d_model, d_mlp), "W_out": (d_mlp, d_model), "W_U": (d_model, vocab)}
    transposed = {"W_in", "W_out", "W_U"}
    scale = {"W_in": d_mlp**-0.5, "W_U": vocab**-0.5}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in OneLayerTransformer.WEIGHTS:  # the authors' creation order
            drawn = torch.randn(shapes[name]) * scale.get(name, d_model**-0.5)
            drawn = drawn.T if name in transposed else drawn.reshape(getattr(model, name).weight.shape)
            getattr(model, name).weight.copy_(drawn)
    return model


def transformer_tokens(pairs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, 2) pairs -> (N, 3) token ids ``(a, b, p)``, where ``p`` is the "=" token."""
    return torch.cat([pairs, torch.full((len(pairs), 1), p, dtype=pairs.dtype)], dim=1)


def train_transformer(
    p: int = 29,
    epochs: int = 4000,
    *,
    seed: int = 2,
    split: str = "paper",
    split_seed: int | None = None,
    init: str = "paper",
    train_frac: float = 0.5,
    lr: float = 3e-4,
    weight_decay: float = 1.0,
    batch_size: int = 64,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 256,
    checkpoint_every: int = 20,
    cache_dir=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ModularRun:
    """Train :class:`OneLayerTransformer` on modular addition as the eNTK paper's code does.

    AdamW, cross-entropy over the first ``p`` logits at the last position, shuffled
    minibatches. ``seed`` seeds the weights and the shuffling.

    split : ``"paper"`` (default) the authors' one fixed split for every seed
        (:func:`paper_split`), ``"seeded"`` a split drawn with ``split_seed`` (default:
        ``seed``).
    init : ``"paper"`` (default) draws the weights as the authors' code does
        (:func:`paper_transformer_init`), ``"torch"`` with ``nn.init.normal_`` after
        PyTorch's default initialisation (the same distributions, other draws).

    Cached in ``cache_dir`` by every argument.
    """
    checks.transformer_arguments(p=p, epochs=epochs, seed=seed, split=split, split_seed=split_seed, init=init,
                                 train_frac=train_frac, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                                 d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, checkpoint_every=checkpoint_every,
                                 device=device, cache_dir=cache_dir)
    p = check_modulus(p)
    split_seed = seed if split_seed is None else split_seed
    pairs, labels = modular_addition_pairs(p)
    tokens = transformer_tokens(pairs, p)
    train_idx, test_idx = split_indices(len(pairs), train_frac, split, split_seed)
    model = _seeded(lambda: OneLayerTransformer(p, d_model, n_heads, d_mlp), seed)
    if init == "paper":
        paper_transformer_init(model, seed)
    key = dict(p=p, epochs=epochs, seed=seed, split=split, split_seed=split_seed if split == "seeded" else None,
               init=init, train_frac=train_frac, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
               d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, checkpoint_every=checkpoint_every)
    return _cached_run("transformer", key, model, p, pairs, labels, tokens, train_idx, test_idx, cache_dir,
                       code=(transformer_tokens, paper_transformer_init),
                       epochs=epochs, lr=lr, weight_decay=weight_decay, loss="cross_entropy",
                       batch_size=batch_size, checkpoint_every=checkpoint_every, n_classes=p, seed=seed,
                       device=device, progress=progress)
