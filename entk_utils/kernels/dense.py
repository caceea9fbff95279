"""The empirical neural tangent kernel (eNTK) of a model on a batch of inputs.

For a model ``f(x; theta)`` with ``C`` outputs, the eNTK between inputs ``x_n`` and ``x_m``
is the ``C x C`` matrix ``K[n, m, c, d] = <d f_c(x_n)/d theta, d f_d(x_m)/d theta>``. This
module computes it, and its reductions to one ``N x N`` matrix, in two ways:

* ``method="reference"``: per-example Jacobians with ``torch.func`` (one ``vmap(jacrev)``
  per block of inputs, blocks sized by ``REFERENCE_MEMORY``; one matrix product per
  parameter). Correct for any model whose examples do not interact (no batch statistics).
* ``method="fast"``: for the weight (and bias) of every ``nn.Linear`` the per-example
  gradient of an output is ``sum_t g_t x_t^T`` (``g`` = its gradient w.r.t. the layer's
  output, the *signal*; ``x`` = the layer's input; ``t`` over positions and repeated calls),
  so the kernel is the element-wise product of two Gram matrices and no Jacobian is formed;
  an ``nn.Embedding`` is the same with one-hot inputs. The signals come from one backward
  pass per chunk of inputs: of the mean output for ``reduce="mean"`` (the mean over all
  output pairs is the kernel of the mean output), batched over the ``C`` outputs for
  ``"trace"`` and ``"full"``. For ``"trace"`` the sum over outputs is folded before the Gram
  where a layer's units reach a fixed linear readout one to one (a final linear layer; a
  hidden layer followed by an element-wise activation and that readout): then the signals
  of all outputs are one signal times a weight per unit.

Every shortcut is checked before it is used, on a probe batch of inputs: that the
factorisation reproduces autograd's gradient of each parameter (weight tying or a
subclass with its own ``forward`` break it), and that a fold reproduces every per-output
signal. A fold is checked again on every input (the signal of a random combination of the
outputs, one more backward pass through the readout). A parameter that fails, and
parameters of other modules, go to the reference path; a layer whose fold fails gets the
per-output signals.

``method="auto"`` (default) is the fast path. Both return the same numbers; the tests and
``benchmarks/bench_entk.py`` check it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .gram import fast_contributions
from .reference import reference_contributions


REDUCTIONS = ("trace", "mean", "full")


KERNEL_METHODS = ("auto", "fast", "reference")  # how a dense kernel is computed (method=)


# --------------------------------------------------------------------------- parameter groups
def resolve_params(model: nn.Module, params: str | Iterable[str] | None = None) -> list[str]:
    """Names of the trainable parameters selected by ``params``.

    ``params`` is ``None`` (all parameters with ``requires_grad``), or a name / list of
    names, each either a full parameter name (``"fc1.weight"``) or a module prefix
    (``"fc1"`` selects every parameter under ``fc1``). Returns names in the model's order;
    raises ``ValueError`` naming an entry that matches nothing.
    """
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    if params is None:
        return trainable
    if isinstance(params, str):
        params = [params]
    params = list(params)
    if not params:
        raise ValueError("params is an empty list; pass None for all parameters")
    chosen = set()
    for entry in params:
        hits = [n for n in trainable if n == entry or n.startswith(entry + ".")]
        if not hits:
            raise ValueError(
                f"unknown parameter group {entry!r}; valid names are {trainable} "
                f"(or any module prefix of them)"
            )
        chosen.update(hits)
    return [n for n in trainable if n in chosen]


def _check_args(inputs: torch.Tensor, reduce: str, method: str, chunk_size: int | None) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce={reduce!r}; choose one of {REDUCTIONS}")
    if method not in KERNEL_METHODS:
        raise ValueError(f"unknown method={method!r}; choose one of {KERNEL_METHODS}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor of shape (N, ...), got {type(inputs).__name__}")
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must hold at least one example, got shape {tuple(inputs.shape)}")


def _warn_if_not_finite(what: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    """Warn in one line (``RuntimeWarning``) naming the tensors that hold NaN or inf values;
    return whether it warned."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        warnings.warn(f"entk: {what} {', '.join(bad)} hold non-finite values (NaN or inf)", RuntimeWarning, stacklevel=3)
    return bool(bad)


def _sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors (a single one is returned as it is, not copied)."""
    first, *rest = tensors
    total = first + rest[0] if rest else first
    for t in rest[1:]:
        total += t
    return total


# --------------------------------------------------------------------------- public API
def entk_contributions(
    model: nn.Module,
    inputs: torch.Tensor,
    params: str | Iterable[str] | None = None,
    reduce: str = "trace",
    *,
    method: str = "auto",
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """The eNTK of each selected parameter tensor on its own: ``{param_name: K}``.

    The full kernel is the sum of the values. Shapes and arguments as in :func:`entk`.
    """
    _check_args(inputs, reduce, method, chunk_size)
    names = resolve_params(model, params)
    bad_inputs = _warn_if_not_finite("the", {"inputs": inputs})
    if device is not None:
        model = model.to(device)
    inputs = inputs.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    compute = reference_contributions if method == "reference" else fast_contributions
    try:
        kernels = {n: k.detach() for n, k in compute(model, inputs, names, reduce, chunk_size).items()}
    finally:
        model.train(was_training)
    if not bad_inputs:  # |K[n, m]| <= sqrt(K[n, n] K[m, m]): a kernel is finite where its diagonal is
        _warn_if_not_finite("the kernels of", {n: k.diagonal(0, 0, 1) for n, k in kernels.items()})
    return {n: kernels[n] for n in names}


def entk(
    model: nn.Module,
    inputs: torch.Tensor,
    params: str | Iterable[str] | None = None,
    reduce: str = "trace",
    *,
    method: str = "auto",
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Empirical NTK of ``model`` on ``inputs``.

    Parameters
    ----------
    model : maps a batch (N, ...) to outputs (N, C); examples must not interact.
    inputs : (N, ...) tensor (float features or integer token ids).
    params : ``None`` for all trainable parameters, or names / module prefixes (the
        layerwise eNTK of that group).
    reduce : ``"trace"`` -> (N, N), ``sum_c K[n, m, c, c] / C``;
        ``"mean"`` -> (N, N), the mean over all ``C * C`` output pairs;
        ``"full"`` -> (N, N, C, C).
    method : ``"auto"`` / ``"fast"`` (Gram factorisation for nn.Linear and nn.Embedding
        parameters, reference elsewhere) or ``"reference"`` (torch.func Jacobians throughout).
    chunk_size : inputs per forward/backward pass of the fast path (default ``FAST_CHUNK``)
        and per Jacobian block of the reference path (default: blocks sized by
        ``REFERENCE_MEMORY``); bounds memory.
    device : move the model there first (e.g. ``"cuda"``); default: where the model is.

    Returns the kernel as a tensor on the model's device, in the model's dtype. Warns
    (``RuntimeWarning``) when the inputs or the kernel hold NaN or inf values.
    """
    kernels = entk_contributions(model, inputs, params, reduce, method=method, chunk_size=chunk_size, device=device)
    return _sum(kernels.values())


def layerwise_entk(
    model: nn.Module,
    inputs: torch.Tensor,
    groups: Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    reduce: str = "trace",
    **kwargs,
) -> dict[str, torch.Tensor]:
    """The eNTK restricted to each parameter group: ``{group: K}``.

    ``groups`` is ``None`` (one group per parameter tensor), a list of names / module
    prefixes (one group each), or a mapping ``{label: name-or-names}``. Groups must not
    share parameters; when they cover every trainable parameter the kernels sum to
    :func:`entk`. Other arguments as in :func:`entk`.
    """
    if groups is None:
        groups = {n: [n] for n in resolve_params(model)}
    elif not isinstance(groups, Mapping):
        groups = {g: [g] for g in groups}
    members = {label: resolve_params(model, sel) for label, sel in groups.items()}
    seen = {}
    for label, names in members.items():
        for n in names:
            if n in seen:
                raise ValueError(f"parameter {n!r} is in both group {seen[n]!r} and group {label!r}")
            seen[n] = label
    contributions = entk_contributions(model, inputs, list(seen), reduce, **kwargs)
    return {label: _sum(contributions[n] for n in names) for label, names in members.items()}


def reference_error(model: nn.Module, inputs: torch.Tensor, fast: torch.Tensor | Mapping[str, torch.Tensor], *,
                    reduce: str = "trace", n_check: int = 64, seed: int = 0) -> float:
    """How far kernels computed on the fast path are from the torch.func reference, on a seeded
    random subset of ``n_check`` inputs (the habit of checking a fast kernel against a slow
    one): the largest relative Frobenius difference.

    fast : the (N, N) kernel of all parameters, or ``{parameter group: (N, N) kernel}`` as
        :func:`layerwise_entk` returns (groups that are not parameter names or prefixes,
        e.g. a ``"full"`` sum, are skipped).
    """
    n = inputs.shape[0]
    if not 1 <= n_check <= n:
        raise ValueError(f"n_check must lie in 1..{n} (the inputs), got {n_check}")
    subset = torch.from_numpy(np.random.default_rng(seed).choice(n, n_check, replace=False))
    if isinstance(fast, torch.Tensor):
        fast_sub, reference = {"all": fast[subset][:, subset]}, {"all": entk(model, inputs[subset], reduce=reduce,
                                                                               method="reference")}
    else:
        trainable = {name for name, _ in model.named_parameters()}
        groups = [g for g in fast if any(t == g or t.startswith(g + ".") for t in trainable)]
        reference = layerwise_entk(model, inputs[subset], groups, reduce=reduce, method="reference")
        fast_sub = {g: fast[g][subset][:, subset] for g in groups}
    return max(((fast_sub[g] - reference[g]).norm() / reference[g].norm()).item() for g in reference)


def output_jacobian(model: nn.Module, inputs: torch.Tensor, params: str | Iterable[str] | None = None, *,
                    output_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, slice]]:
    """The per-example Jacobian of the outputs with respect to the chosen parameters, flat:
    ``(J (N*C, P), {name: its slice of the P columns})``, rows ordered input-major (row
    ``n*C + c`` is output c of input n). ``J @ J.T`` is the ``"full"`` eNTK laid out as
    (N*C, N*C); its rank is at most P, so for a small model its eigenpairs come cheaper from
    ``J``'s SVD (:func:`~entk_utils.kernels.eigen.jacobian_eigenpairs`). ``output_scale``
    (C,) multiplies output c's rows (e.g. the square roots of the outputs' loss importances)."""
    from torch.func import functional_call, jacrev, vmap

    names = resolve_params(model, params)
    chosen = {n: p.detach() for n, p in model.named_parameters() if n in names}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    fixed.update({n: b.detach() for n, b in model.named_buffers()})

    def outputs(theta, x):
        return functional_call(model, {**fixed, **theta}, (x.unsqueeze(0),))[0]

    with torch.no_grad():
        per_param = vmap(jacrev(outputs), in_dims=(None, 0))(chosen, inputs)  # {name: (N, C, *shape)}
    n, c = per_param[names[0]].shape[:2]
    J = torch.cat([per_param[name].reshape(n, c, -1) for name in names], dim=2)
    if output_scale is not None:
        J = J * torch.as_tensor(output_scale, dtype=J.dtype).reshape(1, c, 1)
    sizes = np.cumsum([0] + [chosen[name].numel() for name in names])
    return J.reshape(n * c, -1), {name: slice(int(a), int(b)) for name, a, b in zip(names, sizes[:-1], sizes[1:])}
