"""The toy model of superposition (Elhage et al. 2022, "Toy Models of Superposition"):
``x_hat = ReLU(W^T W x + b)``, n sparse features squeezed into m < n hidden dimensions, and the
variant with a frozen identity hidden layer, ``ReLU(W^T I W x + b)``, as Stochastic Parameter
Decomposition (Bushnaq et al. 2025, arXiv 2506.20790) and Attribution-based Parameter
Decomposition (Braun et al. 2025, arXiv 2501.14926) train them. A trained model's features are
known: feature j is written along column ``W[:, j]`` (those with a non-negligible norm are the
ones it represents).

:class:`TMSRecipe` spells every training argument once (the defaults are SPD's 5-2 recipe:
each feature on with probability 0.05, uniform on [0, 1] when on, importance 1, mean squared
error, AdamW lr 5e-3 and weight decay 0.01, 10,000 steps of 1,024 samples, seed 0);
:data:`CONFIGURATIONS` names SPD's four models; :func:`train_tms` trains one, cached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ...io import checks
from ...io.cache import cached


class TMS(nn.Module):
    """``ReLU(W^T W x + b)`` (or ``ReLU(W^T I W x + b)`` with ``identity``, I frozen), ``W``
    (m, n) tied, ``b`` (n,) on the output only. ``hidden(x)`` is ``W x`` (B, m): the
    activations a feature finder reads."""

    def __init__(self, n_features: int, n_hidden: int, identity: bool = False):
        super().__init__()
        self.W = nn.Parameter(torch.empty(n_hidden, n_features))
        nn.init.xavier_normal_(self.W)
        self.b = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("identity", torch.eye(n_hidden) if identity else None)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        if self.identity is not None:
            h = h @ self.identity.T
        return torch.relu(h @ self.W + self.b)


def sample_features(n_samples: int, n_features: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """(n_samples, n_features): each feature on with ``probability``, then uniform on [0, 1]."""
    on = torch.rand(n_samples, n_features, generator=generator) < probability
    return on * torch.rand(n_samples, n_features, generator=generator)


@dataclass(frozen=True)
class TMSRecipe:
    """How a toy model of superposition is trained: ``n_features`` into ``n_hidden``
    dimensions (``identity``: with the frozen identity hidden layer), each feature on with
    ``probability``, importances ``importance_decay ** j`` in the loss, AdamW at ``lr`` with
    ``weight_decay`` for ``steps`` steps of ``batch_size`` fresh samples, ``seed`` seeding the
    weights and the data."""

    n_features: int = 5
    n_hidden: int = 2
    identity: bool = False
    probability: float = 0.05
    importance_decay: float = 1.0
    steps: int = 10_000
    batch_size: int = 1024
    lr: float = 5e-3
    weight_decay: float = 0.01
    seed: int = 0

    def check(self) -> None:
        """One line naming the first field that cannot work."""
        checks.integer("n_features", self.n_features, minimum=1)
        checks.integer("n_hidden", self.n_hidden, minimum=1)
        checks.real("probability", self.probability, minimum=0, maximum=1, low_open=True)
        checks.real("importance_decay", self.importance_decay, minimum=0, maximum=1, low_open=True)
        for name in ("steps", "batch_size"):
            checks.integer(name, getattr(self, name), minimum=1)
        checks.real("lr", self.lr, minimum=0, low_open=True)
        checks.real("weight_decay", self.weight_decay, minimum=0)
        checks.integer("seed", self.seed, minimum=0)
        if not isinstance(self.identity, bool):
            raise checks.fail("identity", self.identity, "True or False")

    @property
    def name(self) -> str:
        """``"40-10"``, ``"5-2+ID"``: features-hidden, and whether the identity layer is in."""
        return f"{self.n_features}-{self.n_hidden}{'+ID' if self.identity else ''}"

    def importances(self) -> torch.Tensor:
        """(n_features,) the loss weights ``importance_decay ** j``."""
        return self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)


# SPD's four target models (its TMS appendix): batch 1,024 for 5-2, 8,192 for 40-10.
CONFIGURATIONS = {
    "5-2": TMSRecipe(5, 2),
    "5-2+ID": TMSRecipe(5, 2, identity=True),
    "40-10": TMSRecipe(40, 10, batch_size=8192),
    "40-10+ID": TMSRecipe(40, 10, identity=True, batch_size=8192),
}


def recipe_of(name: str, **changes) -> TMSRecipe:
    """The recipe a configuration name stands for: one of :data:`CONFIGURATIONS`, or any
    ``"<n>-<m>"`` / ``"<n>-<m>+ID"`` (SPD's recipe otherwise), with ``changes`` to its fields
    (None values ignored); ``ValueError`` naming the name otherwise."""
    import re

    found = re.fullmatch(r"(\d+)-(\d+)(\+ID)?", str(name))
    if found is None:
        raise checks.fail("configuration", name, "'<features>-<hidden>' or '<features>-<hidden>+ID', e.g. '40-10'")
    base = CONFIGURATIONS.get(name) or TMSRecipe(int(found[1]), int(found[2]), identity=bool(found[3]))
    recipe = replace(base, **{k: v for k, v in changes.items() if v is not None})
    recipe.check()
    return recipe


@dataclass
class TMSRun:
    """A trained toy model: its ``recipe``, the ``model`` (eval mode) and the training
    ``losses`` (one per 100 steps)."""

    recipe: TMSRecipe
    model: TMS
    losses: np.ndarray

    @property
    def features(self) -> np.ndarray:
        """(n, m): each feature's hidden-space vector ``W[:, j]`` (the ground truth)."""
        return self.model.W.detach().double().T.numpy()

    def inputs(self, n: int, seed: int) -> torch.Tensor:
        """``n`` fresh inputs (n, n_features) from the training distribution, drawn with ``seed``."""
        generator = torch.Generator().manual_seed(int(seed))
        return sample_features(n, self.recipe.n_features, self.recipe.probability, generator)


def _train(recipe: TMSRecipe, progress: bool) -> dict:
    torch.manual_seed(recipe.seed)
    model = TMS(recipe.n_features, recipe.n_hidden, recipe.identity)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    importances, losses = recipe.importances(), []
    for step in tqdm(range(recipe.steps), desc=f"training TMS {recipe.name}", disable=not progress):
        x = sample_features(recipe.batch_size, recipe.n_features, recipe.probability, generator)
        loss = (importances * (model(x) - x) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            losses.append(loss.item())
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "losses": torch.tensor(losses)}


def train_tms(recipe: TMSRecipe | None = None, /, *, cache_dir=None, progress: bool = True, **changes) -> TMSRun:
    """Train a toy model of superposition by ``recipe`` (default: SPD's 5-2) with ``changes``
    to its fields, cached in ``cache_dir`` (keyed by the recipe and the training code)."""
    recipe = replace(recipe or TMSRecipe(), **changes)
    recipe.check()
    entry = cached(cache_dir, "tms", lambda: _train(recipe, progress), produced_by=(_train, TMS, sample_features),
                   recipe=asdict(recipe))
    model = TMS(recipe.n_features, recipe.n_hidden, recipe.identity)
    model.load_state_dict(entry["state"])
    return TMSRun(recipe, model.eval(), entry["losses"].numpy())
