"""Causal tests of directions over the inputs: do they carry what the model computes?

A set of directions is an (N, k) matrix whose columns are functions over the N inputs
(eNTK eigenvectors, a Fourier family, PCA scores of the hidden layer, random vectors). Two
interventions ask how much the model's function depends on their span:

* **Function-space ablation.** Take the logits ``F`` (N, C) of the model on all inputs and
  remove, output by output, their component in the span: ``F - Q Q^T F`` with ``Q`` an
  orthonormal basis of the span. :func:`ablation_curve` reports accuracy and losses after
  ablating the first ``k`` directions of each method.
* **Weight-space perturbation.** The weight direction that shrinks the outputs inside the
  span fastest is the gradient ``g = d/dtheta 1/2 ||Q^T F(theta)||_F^2``
  (:func:`projection_gradient`). :func:`perturbation_curve` steps ``theta - eps * d`` along
  unit-norm directions ``d`` (without touching the model) and reports how the loss grows.

Both take any model mapping a batch of inputs (N, ...) to outputs (N, C'); the first
``n_scored`` outputs (default: all) are the logits that are scored, as in training (the
Transformer of the modular settings has one output per token and scores the ``p`` residues:
:func:`model_logits`). :func:`next_token_shift` does the weight-space test for a causal
language model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.special
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ..io.checks import index_array
from ..io.hooks import removing
from ..kernels.anatomy import find_anatomy
from ..kernels.module_tools import replaced_forwards, replay_forward
from .geometry import orthonormal_basis


# --------------------------------------------------------------------------- model outputs
def model_logits(model: nn.Module, inputs: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None,
                 n_scored: int | None = None) -> torch.Tensor:
    """The logits (N, C) that are scored, optionally with substituted parameters.

    model : maps inputs (N, ...) to outputs (N, C'); the first ``n_scored`` (default: all)
        are kept, C = n_scored (e.g. the ``p`` answer logits of the modular Transformer, as
        training scores them).
    params : ``{name: tensor}`` replacing some or all parameters for this call only
        (``torch.func.functional_call``); the module itself is never modified.

    Gradients flow through (call under ``torch.no_grad()`` when they are not wanted).
    """
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor of shape (N, ...), got {type(inputs).__name__}")
    out = model(inputs) if params is None else functional_call(model, dict(params), (inputs,))
    if out.ndim != 2:
        raise ValueError(f"the model must return (N, C) logits, got shape {tuple(out.shape)}")
    if n_scored is not None:
        if not 1 <= n_scored <= out.shape[1]:
            raise ValueError(f"n_scored must lie in 1..{out.shape[1]} (the model's outputs), got {n_scored}")
        out = out[:, :n_scored]
    return out


def _as_matrix(x, name: str) -> np.ndarray:
    """``x`` (array or tensor) as a float64 numpy array with two dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, k) matrix, got shape {x.shape}")
    return x


def _as_targets(targets, n: int) -> np.ndarray:
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).reshape(-1)
    if t.shape != (n,):
        raise ValueError(f"targets must have shape ({n},) (one class per input), got {t.shape}")
    return t.astype(np.int64)


def classification_metrics(logits, targets) -> dict[str, float]:
    """Accuracy, cross-entropy and MSE (against one-hot) of (n, C) logits on (n,) targets.

    ``loss_mse`` is the mean over all ``n * C`` entries, as ``torch.nn.functional.mse_loss``
    and the training loop of :mod:`entk_utils.settings.modular` compute it.
    """
    z = _as_matrix(logits, "logits")
    t = np.asarray(targets).reshape(-1).astype(np.int64)
    if len(t) != len(z):
        raise ValueError(f"{len(z)} rows of logits but {len(t)} targets")
    if t.min() < 0 or t.max() >= z.shape[1]:
        raise ValueError(f"targets must lie in 0..{z.shape[1] - 1}")
    rows = np.arange(len(t))
    one_hot = np.zeros_like(z)
    one_hot[rows, t] = 1.0
    return {
        "accuracy": float(np.mean(z.argmax(1) == t)),
        "loss_ce": float(np.mean(scipy.special.logsumexp(z, axis=1) - z[rows, t])),
        "loss_mse": float(np.mean((z - one_hot) ** 2)),
    }


def _ordered_basis(directions, rtol: float = 1e-10) -> np.ndarray:
    """Gram-Schmidt (by QR) of (N, K) ordered directions: (N, K) with ``span(Q[:, :k]) =
    span(directions[:, :k])`` for every ``k``.

    A column that lies in the span of the ones before it (relative residual below ``rtol``)
    adds nothing, so its column of the result is zero.
    """
    D = _as_matrix(directions, "directions")
    norms = np.linalg.norm(D, axis=0)
    if D.shape[1] == 0 or not np.any(norms > 0):
        raise ValueError(f"directions must hold at least one non-zero column, got shape {D.shape}")
    Q, R = np.linalg.qr(D)
    redundant = np.abs(np.diag(R)) <= rtol * np.maximum(norms, np.finfo(float).tiny)
    Q[:, redundant] = 0.0
    return Q


# --------------------------------------------------------------------------- function space
def ablate_outputs(logits, basis) -> np.ndarray:
    """Logits with their component in span(basis) removed, output by output.

    logits : (N, C) model outputs over all N inputs (array or tensor).
    basis : (N, k) functions over the same inputs, in any scaling; redundant columns are
        fine (only their span counts, via :func:`~entk_utils.features.geometry.orthonormal_basis`).

    Returns the (N, C) float64 array ``F - Q Q^T F`` with ``Q`` an orthonormal basis of
    span(basis): every column is orthogonal to the basis, and ablating twice changes
    nothing. A basis with no columns or only zero columns raises ``ValueError`` (there is
    no span to remove; pass the logits through unchanged yourself if that is meant).
    """
    F = _as_matrix(logits, "logits")
    B = _as_matrix(basis, "basis")
    if B.shape[0] != F.shape[0]:
        raise ValueError(f"basis has {B.shape[0]} rows but logits have {F.shape[0]} (one per input)")
    if B.shape[1] == 0 or not np.any(B):
        raise ValueError(f"basis spans the zero subspace (shape {B.shape}); nothing to ablate")
    Q = orthonormal_basis(B)
    return F - Q @ (Q.T @ F)


def ablation_curve(logits, targets, eval_idx, directions: Mapping[str, object], ks: Sequence[int]
                   ) -> pd.DataFrame:
    """Accuracy and losses after ablating the first ``k`` directions of each method.

    logits : (N, C) outputs over all N inputs; the projection is taken over all of them.
    targets : (N,) class of every input; eval_idx : indices (or an (N,) mask) of the inputs
        scored (e.g. the test split); ``None`` scores all.
    directions : ``{method: (N, K) directions}``, columns in order of importance (e.g.
        eigenvectors by descending eigenvalue, PCA by variance).
    ks : how many leading directions to ablate; each must lie in ``0..K`` of every method.
        ``k = 0`` (the unablated model) is always reported, once per method.

    Returns a tidy DataFrame with columns ``method, k, accuracy, loss_ce, loss_mse`` (see
    :func:`classification_metrics`), one row per method and ``k`` in ascending order.
    """
    F = _as_matrix(logits, "logits")
    n = F.shape[0]
    t = _as_targets(targets, n)
    idx = index_array(eval_idx, n, "eval_idx")
    ks = sorted({0, *(int(k) for k in ks)})
    if not directions:
        raise ValueError("directions is empty; pass {method name: (N, K) directions}")
    bases = {}
    for method, D in directions.items():
        D = _as_matrix(D, f"directions[{method!r}]")
        if D.shape[0] != n:
            raise ValueError(f"directions[{method!r}] has {D.shape[0]} rows but there are {n} inputs")
        if ks[0] < 0 or ks[-1] > D.shape[1]:
            raise ValueError(f"ks must lie in 0..{D.shape[1]} for method {method!r} (it has {D.shape[1]} "
                             f"directions), got {ks}")
        bases[method] = _ordered_basis(D)
    rows = []
    for method, Q in bases.items():
        coef = Q.T @ F  # (K, C): the logits' coordinates along each orthonormalised direction
        for k in ks:
            ablated = F[idx] - Q[idx, :k] @ coef[:k]
            rows.append({"method": method, "k": k, **classification_metrics(ablated, t[idx])})
    return pd.DataFrame(rows, columns=["method", "k", "accuracy", "loss_ce", "loss_mse"])


# --------------------------------------------------------------------------- weight space
def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def projection_objective(model: nn.Module, inputs: torch.Tensor, V, params: Mapping[str, torch.Tensor] | None = None,
                         n_scored: int | None = None) -> torch.Tensor:
    """``1/2 ||Q^T F||_F^2``: half the squared size of the logits ``F`` (N, C) inside
    span(V), with ``Q`` (N, r) an orthonormal basis of the (N, k) functions ``V``.

    A scalar tensor, differentiable in ``params`` (see :func:`model_logits`).
    """
    F = model_logits(model, inputs, params, n_scored)
    B = _as_matrix(V, "V")
    if B.shape[0] != F.shape[0]:
        raise ValueError(f"V has {B.shape[0]} rows but there are {F.shape[0]} inputs")
    if B.shape[1] == 0 or not np.any(B):
        raise ValueError(f"V spans the zero subspace (shape {B.shape})")
    Q = torch.as_tensor(orthonormal_basis(B), dtype=F.dtype, device=F.device)
    return 0.5 * (Q.T @ F).pow(2).sum()


def projection_gradient(model: nn.Module, inputs: torch.Tensor, V, n_scored: int | None = None
                        ) -> dict[str, torch.Tensor]:
    """The weight direction that grows the model's outputs inside span(V) fastest.

    ``g = d/dtheta 1/2 ||Q^T F(theta)||_F^2`` over all trainable parameters, with ``F``
    (N, C) the logits over ``inputs`` (:func:`model_logits`) and ``Q`` an orthonormal basis
    of the (N, k) functions ``V``; stepping ``theta - eps * g`` shrinks that part of the
    function. Returns ``{name: tensor}`` shaped like each parameter (detached); neither the
    parameters nor their ``.grad`` are touched.
    """
    params = {name: p.detach().clone().requires_grad_(True) for name, p in _trainable(model).items()}
    objective = projection_objective(model, inputs, V, params, n_scored)
    grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
    return {name: (torch.zeros_like(p) if g is None else g.detach()) for (name, p), g in zip(params.items(), grads)}


def random_weight_direction(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniformly random unit direction in the space of all trainable parameters.

    ``{name: tensor}`` shaped (and typed, and placed) like each parameter, Gaussian from
    ``torch.Generator().manual_seed(seed)``, scaled to unit total Frobenius norm.
    """
    generator = torch.Generator().manual_seed(int(seed))
    params = _trainable(model)
    direction = {name: torch.randn(p.shape, generator=generator, dtype=torch.float64) for name, p in params.items()}
    total = direction_norm(direction)
    return {name: (d / total).to(dtype=params[name].dtype, device=params[name].device) for name, d in direction.items()}


def direction_norm(direction: Mapping[str, torch.Tensor]) -> float:
    """Total Frobenius norm ``sqrt(sum_name ||d_name||^2)`` of a parameter-space direction."""
    return float(torch.sqrt(sum(d.detach().double().pow(2).sum() for d in direction.values())))


def _unit_direction(model: nn.Module, direction: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``direction`` checked against the model's parameters and scaled to unit total norm.

    Parameters missing from ``direction`` do not move.
    """
    params = _trainable(model)
    unknown = sorted(set(direction) - set(params))
    if unknown:
        raise ValueError(f"direction {name!r} names parameters {unknown} the model does not train; "
                         f"valid names are {list(params)}")
    for key, d in direction.items():
        if tuple(d.shape) != tuple(params[key].shape):
            raise ValueError(f"direction {name!r}: {key} has shape {tuple(d.shape)}, "
                             f"the parameter has {tuple(params[key].shape)}")
    total = direction_norm(direction)
    if not np.isfinite(total) or total == 0:
        raise ValueError(f"direction {name!r} has total norm {total}; it must be finite and non-zero")
    return {key: d.detach().to(dtype=params[key].dtype, device=params[key].device) / total
            for key, d in direction.items()}


def perturbation_curve(model: nn.Module, inputs: torch.Tensor, targets, eval_idx,
                       directions: Mapping[str, Mapping[str, torch.Tensor]], norms: Sequence[float],
                       *, n_scored: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Loss and accuracy after moving the weights ``theta - eps * d`` along unit directions.

    inputs : (N, ...) all inputs; targets : (N,) their classes; eval_idx : indices (or an
        (N,) mask) of the inputs scored, ``None`` for all.
    directions : ``{method: {parameter name: tensor}}``, e.g. :func:`projection_gradient`
        or :func:`random_weight_direction`; each is rescaled to unit total Frobenius norm, so
        methods are compared at equal step length. Parameters a direction leaves out stay put.
    norms : step lengths ``eps >= 0``.
    n_scored : how many leading outputs are the scored logits (:func:`model_logits`).

    The model is evaluated with ``torch.func.functional_call``: its parameters are never
    changed. Returns a tidy DataFrame with columns ``method, norm, accuracy, loss_ce,
    loss_mse, delta_loss_ce, delta_loss_mse``, the deltas relative to the unperturbed model
    (``eps = 0``).
    """
    norms = [float(eps) for eps in norms]
    if not norms or any(not np.isfinite(eps) or eps < 0 for eps in norms):
        raise ValueError(f"norms must be a non-empty list of finite step lengths >= 0, got {norms}")
    if not directions:
        raise ValueError("directions is empty; pass {method name: {parameter name: tensor}}")
    units = {method: _unit_direction(model, d, method) for method, d in directions.items()}
    n = len(inputs)
    t = _as_targets(targets, n)
    idx = index_array(eval_idx, n, "eval_idx")
    x = inputs[torch.as_tensor(idx, device=inputs.device)]
    theta = {name: p.detach() for name, p in _trainable(model).items()}

    def evaluate(params):
        with torch.no_grad():
            return classification_metrics(model_logits(model, x, params, n_scored), t[idx])

    base = evaluate(theta)
    rows = []
    jobs = [(method, eps) for method in units for eps in norms]
    for method, eps in tqdm(jobs, desc="perturbing", disable=not progress):
        moved = {name: theta[name] - eps * d for name, d in units[method].items()}
        metrics = evaluate({**theta, **moved})
        rows.append({"method": method, "norm": eps, **metrics,
                     "delta_loss_ce": metrics["loss_ce"] - base["loss_ce"],
                     "delta_loss_mse": metrics["loss_mse"] - base["loss_mse"]})
    columns = ["method", "norm", "accuracy", "loss_ce", "loss_mse", "delta_loss_ce", "delta_loss_mse"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- language models
def next_token_shift(model: nn.Module, input_ids: torch.Tensor, param: nn.Parameter | str,
                     directions: Mapping[str, torch.Tensor], norms: Sequence[float], *, chunk_size: int = 32,
                     progress: bool = False, replay_lower_layers: bool = True) -> dict[str, np.ndarray]:
    """How far moving one weight of a causal LM moves its next-token distributions.

    model : a Hugging Face causal LM; input_ids : (N, T) contexts; param : one of the
    model's parameters, or its full name (e.g. ``model.layers.16.mlp.down_proj.weight``);
    directions : ``{name: tensor of the parameter's shape}``, each rescaled to unit Frobenius
    norm; norms : step lengths ``eps``.

    For each direction and ``eps`` the model is evaluated with the weight ``theta + eps * d``
    (``torch.func.functional_call``: the model itself is never changed) and the next-token
    distribution at the last position of every context is compared with the original one.
    With ``replay_lower_layers`` the decoder layers below the weight's own, which it cannot
    change, replay their outputs of the first pass instead of computing them again: the
    model's own forward runs on the same tensors, so the result is the same to the bit, at
    the cost of the layers from the weight's up.
    Returns ``{name: (len(norms), N)}`` of ``KL(p_original || p_moved)`` in nats.
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    key = param if isinstance(param, str) else name_of.get(id(param))
    weights = dict(model.named_parameters())
    if key not in weights:
        raise ValueError(f"param must be one of the model's parameters or its name, got {param!r}")
    theta = weights[key].detach()
    units = {}
    for name, d in directions.items():
        d = d.detach().to(theta.device, theta.dtype)
        if d.shape != theta.shape:
            raise ValueError(f"direction {name!r} has shape {tuple(d.shape)}, the parameter {tuple(theta.shape)}")
        size = torch.linalg.norm(d)
        if not torch.isfinite(size) or size == 0:
            raise ValueError(f"direction {name!r} must be finite and non-zero")
        units[name] = d / size
    ids = input_ids.to(theta.device)
    chunks = [slice(i, i + chunk_size) for i in range(0, len(ids), chunk_size)]
    below = _layers_below(model, key) if replay_lower_layers else []
    recorded = {}  # (chunk, layer) -> that layer's output on the first pass

    def logits(weight, c: int, replay: bool):
        kwargs = {"input_ids": ids[chunks[c]], "logits_to_keep": 1}  # only the last position is unembedded
        if not replay:
            hooks = [layer.register_forward_hook(lambda m, a, out, i=i: recorded.__setitem__((c, i), out))
                     for i, layer in enumerate(below)]
            with removing(hooks):
                return functional_call(model, {key: weight}, args=(), kwargs=kwargs).logits[:, -1]
        with replaced_forwards({layer: replay_forward([recorded[c, i]]) for i, layer in enumerate(below)}):
            return functional_call(model, {key: weight}, args=(), kwargs=kwargs).logits[:, -1]

    def log_probs(weight, replay: bool):
        with torch.no_grad():
            return torch.cat([torch.log_softmax(logits(weight, c, replay).double(), -1) for c in range(len(chunks))])

    base = log_probs(theta, replay=False)
    out = {name: np.empty((len(norms), len(ids))) for name in units}
    jobs = [(name, row, float(eps)) for name in units for row, eps in enumerate(norms)]
    for name, row, eps in tqdm(jobs, desc="moving the weight", disable=not progress):
        moved = log_probs(theta + eps * units[name], replay=bool(below))
        out[name][row] = (base.exp() * (base - moved)).sum(-1).cpu().numpy()
    return out


def _layers_below(model: nn.Module, key: str) -> list[nn.Module]:
    """The decoder layers below the one holding parameter ``key`` that cannot depend on it
    (none where the model's layers cannot be found, the weight lies outside them, or a lower
    layer holds it too)."""
    try:
        anatomy = find_anatomy(model)
    except ValueError:
        return []
    lowest = anatomy.layer_of(key)
    if not lowest:
        return []
    weight = model.get_parameter(key)
    below = list(anatomy.layers[:lowest])
    return [] if any(p is weight for layer in below for p in layer.parameters()) else below
