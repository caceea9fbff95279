"""Training on modular addition with checkpoints, accuracy curves and a cache.

:func:`train` is the loop (AdamW, full batch or shuffled minibatches). Each paper recipe is a
dataclass, :class:`MLPRecipe` and :class:`TransformerRecipe`, that spells every argument
once; :func:`train_gromov_mlp` and :func:`train_transformer` run one on its data and split
and cache the run in ``cache_dir``, keyed by the recipe and by the code that trains
(:func:`training_code`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...io import checks
from ...io.cache import cached
from .data import SPLITS, modular_addition_pairs, one_hot_pairs, paper_split, split_indices, train_test_split, transformer_tokens
from .models import TRANSFORMER_INITS, GromovMLP, OneLayerTransformer, build_seeded, paper_transformer_init


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


# --------------------------------------------------------------------------- the two recipes
@dataclass(frozen=True)
class Recipe:
    """A training recipe: every argument that changes the trained model, spelled once (the
    fields of a subclass). :meth:`check` validates them; :meth:`key` is what a cached run is
    keyed by; :meth:`of` builds one from keyword arguments, old names included."""

    RENAMED: ClassVar[dict[str, str]] = {}  # {old name: field} still accepted, with a warning

    @classmethod
    def names(cls) -> list[str]:
        """The field names, then the old names still accepted."""
        return [f.name for f in fields(cls)] + list(cls.RENAMED)

    @classmethod
    def of(cls, recipe: "Recipe | None" = None, /, **values) -> "Recipe":
        """``recipe`` (default: the paper's) with ``values`` replacing its fields; an old name
        (:attr:`RENAMED`) is taken with a ``DeprecationWarning``, an unknown one is a
        ``ValueError`` listing the fields."""
        if recipe is not None and not isinstance(recipe, cls):
            raise ValueError(f"recipe must be a {cls.__name__}, got {type(recipe).__name__} {recipe!r}")
        for old, new in cls.RENAMED.items():
            if old in values:
                if new in values and values[new] != values[old]:
                    raise ValueError(f"{old}={values[old]!r} and {new}={values[new]!r}: {old} is the old name of "
                                     f"{new}; give one")
                warnings.warn(f"{old} is now called {new}", DeprecationWarning, stacklevel=3)
                values[new] = values.pop(old)
        checks.known_names(values, [f.name for f in fields(cls)], cls.__name__)
        return replace(recipe or cls(), **values)

    def check(self) -> None:
        """``ValueError`` (one line naming the field) for a value the recipe cannot run."""
        raise NotImplementedError

    def key(self) -> dict:
        """The fields, as a cached run is keyed (a split seed that the split ignores is None)."""
        key = asdict(self)
        if self.split == "paper":
            key["split_seed"] = None
        return key


@dataclass(frozen=True)
class MLPRecipe(Recipe):
    """The Gromov MLP on modular addition as the eNTK paper's code trains it: full-batch
    AdamW on MSE against one-hot targets (one epoch is one step), ``seed`` seeding the
    weights, ``split`` the train/test split (:func:`split_indices`: ``"seeded"`` draws it
    with ``split_seed``, ``"paper"`` is the Transformer code's fixed split)."""

    RENAMED: ClassVar[dict[str, str]] = {"steps": "epochs"}

    p: int = 29
    width: int = 512
    epochs: int = 500
    seed: int = 0
    split: str = "seeded"
    split_seed: int = 0
    train_frac: float = 0.7
    lr: float = 0.05
    weight_decay: float = 0.01
    checkpoint_every: int = 10

    def check(self) -> None:
        checks.check_modulus(self.p)
        checks.integer("width", self.width, minimum=1)
        checks.training(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                        checkpoint_every=self.checkpoint_every, seed=self.seed)
        check_data_split(train_frac=self.train_frac, split=self.split, split_seed=self.split_seed, none_seed="")


@dataclass(frozen=True)
class TransformerRecipe(Recipe):
    """:class:`OneLayerTransformer` on modular addition as the eNTK paper's code trains it:
    AdamW, cross-entropy over the first ``p`` logits at the last position, shuffled
    minibatches of ``batch_size`` (None: full batch); ``seed`` seeds the weights and the
    shuffling.

    split : ``"paper"`` (default) the authors' one fixed split for every seed
        (:func:`paper_split`), ``"seeded"`` a split drawn with ``split_seed`` (default:
        ``seed``).
    init : ``"paper"`` (default) draws the weights as the authors' code does
        (:func:`paper_transformer_init`), ``"torch"`` with ``nn.init.normal_`` after
        PyTorch's default initialisation (the same distributions, other draws).
    """

    p: int = 29
    epochs: int = 4000
    seed: int = 2
    split: str = "paper"
    split_seed: int | None = None
    init: str = "paper"
    train_frac: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 1.0
    batch_size: int | None = 64
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    checkpoint_every: int = 20

    def check(self) -> None:
        checks.check_modulus(self.p)
        checks.training(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                        checkpoint_every=self.checkpoint_every, seed=self.seed, batch_size=self.batch_size)
        check_data_split(train_frac=self.train_frac, split=self.split, split_seed=self.split_seed, none_seed="the seed")
        checks.one_of("init", self.init, TRANSFORMER_INITS)
        checks.integer("n_heads", self.n_heads, minimum=1)
        if checks.integer("d_model", self.d_model, minimum=1) % self.n_heads:
            raise checks.fail("d_model", self.d_model, f"a multiple of n_heads={self.n_heads}")
        checks.integer("d_mlp", self.d_mlp, minimum=1)

    def key(self) -> dict:
        key = super().key()
        if self.split == "seeded" and self.split_seed is None:
            key["split_seed"] = self.seed
        return key


def check_run_arguments(device, cache_dir) -> None:
    """The arguments of a training run besides its recipe: a torch device, a folder or None."""
    checks.torch_device("device", device)
    checks.folder("cache_dir", cache_dir)


def train_gromov_mlp(recipe: MLPRecipe | None = None, /, *, cache_dir=None, device: str | torch.device = "cpu",
                     progress: bool = True, **changes) -> ModularRun:
    """Train the Gromov MLP by ``recipe`` (:class:`MLPRecipe`; default the paper's) with
    ``changes`` to its fields (``train_gromov_mlp(p=19, epochs=300)``). The run is cached in
    ``cache_dir``, keyed by the recipe and the training code, so re-running a notebook does
    not retrain."""
    recipe = MLPRecipe.of(recipe, **changes)
    recipe.check()
    check_run_arguments(device, cache_dir)
    pairs, labels = modular_addition_pairs(recipe.p)
    inputs = one_hot_pairs(pairs, recipe.p)
    train_idx, test_idx = split_indices(len(pairs), recipe.train_frac, recipe.split, recipe.split_seed)
    model = build_seeded(lambda: GromovMLP(recipe.p, recipe.width), recipe.seed)
    return _cached_run("gromov_mlp", recipe, model, pairs, labels, inputs, train_idx, test_idx, cache_dir, device,
                       progress, loss="mse")


def train_transformer(recipe: TransformerRecipe | None = None, /, *, cache_dir=None,
                      device: str | torch.device = "cpu", progress: bool = True, **changes) -> ModularRun:
    """Train :class:`OneLayerTransformer` by ``recipe`` (:class:`TransformerRecipe`; default
    the paper's) with ``changes`` to its fields; cached as :func:`train_gromov_mlp`."""
    recipe = TransformerRecipe.of(recipe, **changes)
    recipe.check()
    check_run_arguments(device, cache_dir)
    split_seed = recipe.seed if recipe.split_seed is None else recipe.split_seed
    pairs, labels = modular_addition_pairs(recipe.p)
    tokens = transformer_tokens(pairs, recipe.p)
    train_idx, test_idx = split_indices(len(pairs), recipe.train_frac, recipe.split, split_seed)
    model = build_seeded(lambda: OneLayerTransformer(recipe.p, recipe.d_model, recipe.n_heads, recipe.d_mlp),
                         recipe.seed)
    if recipe.init == "paper":
        paper_transformer_init(model, recipe.seed)
    return _cached_run("transformer", recipe, model, pairs, labels, tokens, train_idx, test_idx, cache_dir, device,
                       progress, code=(transformer_tokens, paper_transformer_init), loss="cross_entropy",
                       batch_size=recipe.batch_size, n_classes=recipe.p, seed=recipe.seed)


def _cached_run(name, recipe: Recipe, model, pairs, labels, inputs, train_idx, test_idx, cache_dir, device, progress,
                code=(), **train_kwargs):
    """Train by ``recipe`` (or read back from ``cache_dir``, keyed by :meth:`Recipe.key` and by
    the source of :func:`training_code`, the model's class and ``code``), load the final
    weights and bundle everything as a :class:`ModularRun`."""
    def compute():
        return train(model, inputs, labels, train_idx, test_idx, epochs=recipe.epochs, lr=recipe.lr,
                     weight_decay=recipe.weight_decay, checkpoint_every=recipe.checkpoint_every, device=device,
                     progress=progress, **train_kwargs).to_dict()

    result = TrainResult.from_dict(cached(cache_dir, name, compute, produced_by=(*training_code(), type(model), *code),
                                          **recipe.key(), torch=torch.__version__))
    model.load_state_dict(result.final_state())
    return ModularRun(recipe.p, pairs, labels, inputs, train_idx, test_idx, result, model.to(device).eval())


def training_code() -> tuple:
    """What a cached training run depends on besides its arguments and its model class: the
    training loop, the data and split functions and the seeded construction (looked up when
    called, so the cache follows the code this process runs)."""
    return (train, _loss, _evaluate, TrainResult, modular_addition_pairs, one_hot_pairs, split_indices, paper_split,
            train_test_split, build_seeded)


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
