"""Training on modular addition with checkpoints, accuracy curves and a cache.

:func:`train` is the loop (AdamW, full batch or shuffled minibatches); :func:`train_gromov_mlp`
and :func:`train_transformer` run each paper recipe on its data and split and cache the run
in ``cache_dir``, keyed by every argument and by the code that trains (:func:`training_code`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...io import checks
from ...io.cache import cached
from ...io.checks import check_modulus
from .data import SPLITS, modular_addition_pairs, one_hot_pairs, paper_split, split_indices, train_test_split, transformer_tokens
from .models import TRANSFORMER_INITS, GromovMLP, OneLayerTransformer, _seeded, paper_transformer_init


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
    check_mlp_arguments(p=p, width=width, steps=steps, seed=seed, split=split, split_seed=split_seed,
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


def training_code() -> tuple:
    """What a cached training run depends on besides its arguments and its model class: the
    training loop, the data and split functions and the seeded construction (looked up when
    called, so the cache follows the code this process runs)."""
    return (train, _loss, _evaluate, TrainResult, modular_addition_pairs, one_hot_pairs, split_indices, paper_split,
            train_test_split, _seeded)


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
    check_transformer_arguments(p=p, epochs=epochs, seed=seed, split=split, split_seed=split_seed, init=init,
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


# --------------------------------------------------------------------------- argument rules
def check_data_split(*, train_frac: Any, split: Any, split_seed: Any, none_seed: str) -> None:
    """``train_frac`` strictly between 0 and 1, ``split`` one of
    :data:`~entk_utils.settings.modular.data.SPLITS`, ``split_seed`` an integer >= 0, or ``None`` where
    that means something: always under ``split="paper"`` (which ignores it), under
    ``"seeded"`` only where ``none_seed`` says what (e.g. "the seed"; ``""``: nowhere)."""
    checks.real("train_frac", train_frac, minimum=0, maximum=1, low_open=True, high_open=True)
    checks.one_of("split", split, SPLITS)
    if split_seed is None and split == "seeded" and not none_seed:
        raise checks.fail("split_seed", split_seed,
                          "an integer >= 0 under split='seeded' (None would draw an unseeded split)")
    checks.integer("split_seed", split_seed, minimum=0, allow_none=True)


def check_mlp_arguments(*, p: Any, width: Any, steps: Any, seed: Any, split: Any, split_seed: Any, train_frac: Any, lr: Any,
                  weight_decay: Any, checkpoint_every: Any, device: Any, cache_dir: Any = None,
                  progress: Any = True) -> None:
    """The rules for the arguments of :func:`train_gromov_mlp` (same names)."""
    checks.check_modulus(p)
    checks.integer("width", width, minimum=1)
    checks.training(epochs=steps, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every, seed=seed,
                    epochs_name="steps")
    check_data_split(train_frac=train_frac, split=split, split_seed=split_seed, none_seed="")
    checks.torch_device("device", device)
    checks.folder("cache_dir", cache_dir)


def check_transformer_arguments(*, p: Any, epochs: Any, seed: Any, split: Any, split_seed: Any, init: Any, train_frac: Any,
                          lr: Any, weight_decay: Any, batch_size: Any, d_model: Any, n_heads: Any, d_mlp: Any,
                          checkpoint_every: Any, device: Any, cache_dir: Any = None, progress: Any = True) -> None:
    """The rules for the arguments of :func:`train_transformer` (same names)."""
    checks.check_modulus(p)
    checks.training(epochs=epochs, lr=lr, weight_decay=weight_decay, checkpoint_every=checkpoint_every, seed=seed,
                    batch_size=batch_size)
    check_data_split(train_frac=train_frac, split=split, split_seed=split_seed, none_seed="the seed")
    checks.one_of("init", init, TRANSFORMER_INITS)
    checks.integer("n_heads", n_heads, minimum=1)
    if checks.integer("d_model", d_model, minimum=1) % n_heads:
        raise checks.fail("d_model", d_model, f"a multiple of n_heads={n_heads}")
    checks.integer("d_mlp", d_mlp, minimum=1)
    checks.torch_device("device", device)
    checks.folder("cache_dir", cache_dir)
