"""The empirical neural tangent kernel (eNTK) of a model on a batch of inputs.

For a model ``f(x; theta)`` with ``C`` outputs, the eNTK between inputs ``x_n`` and ``x_m``
is the ``C x C`` matrix ``K[n, m, c, d] = <d f_c(x_n)/d theta, d f_d(x_m)/d theta>``. This
module computes it, and its reductions to one ``N x N`` matrix, in two ways:

* ``method="reference"``: per-example Jacobians with ``torch.func`` (``functional_call`` and
  ``vmap(jacrev)``), blocked over inputs so memory stays bounded. Correct for any model
  whose examples do not interact (no batch statistics); slow.
* ``method="fast"``: for the weight (and bias) of every ``nn.Linear`` the per-example
  gradient of output ``c`` is ``sum_t g_{c,t} x_t^T`` (``g`` = gradient w.r.t. the layer's
  output, ``x`` = its input, ``t`` over positions and repeated calls), so the kernel is a
  product of two small Gram matrices and no per-example Jacobian is ever formed; an
  ``nn.Embedding`` is the same with one-hot inputs (its input Gram says which token ids
  coincide). Parameters of other modules, or whose gradient the factorisation does not
  reproduce on a probe batch (weight tying, a subclass with its own ``forward``), fall back
  to the reference path.

``method="auto"`` (default) is the fast path. Both return the same numbers; the tests and
``benchmarks/bench_entk.py`` check it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

REDUCTIONS = ("trace", "mean", "full")
METHODS = ("auto", "fast", "reference")
# Inputs per chunk when chunk_size is None: the reference path holds (chunk, C, P) Jacobians,
# the fast path only activations, so it takes far larger chunks (fewer backward calls).
DEFAULT_CHUNK = {"reference": 64, "fast": 1024}


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


def _check_args(inputs: torch.Tensor, reduce: str, method: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce={reduce!r}; choose one of {REDUCTIONS}")
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}; choose one of {METHODS}")
    if not isinstance(inputs, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor of shape (N, ...), got {type(inputs).__name__}")
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must hold at least one example, got shape {tuple(inputs.shape)}")


def _reduce_block(ja: torch.Tensor, jb: torch.Tensor, reduce: str) -> torch.Tensor:
    """Kernel block from Jacobians ``ja`` (n, C, P) and ``jb`` (m, C, P)."""
    if reduce == "full":
        return torch.einsum("ncp,mdp->nmcd", ja, jb)
    if reduce == "trace":
        return torch.einsum("ncp,mcp->nm", ja, jb) / ja.shape[1]
    # mean over all C*C pairs of <J_c, J_d> = <mean_c J_c, mean_d J_d>
    return ja.mean(1) @ jb.mean(1).T


def _empty_kernel(n: int, n_out: int, reduce: str, like: torch.Tensor) -> torch.Tensor:
    shape = (n, n, n_out, n_out) if reduce == "full" else (n, n)
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------- reference path
def _reference_contributions(model, inputs, names, reduce, chunk_size):
    """Per-parameter kernels ``{name: K}`` from explicit per-example Jacobians."""
    all_params = dict(model.named_parameters())
    frozen = {n: p.detach() for n, p in all_params.items() if n not in names}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})
    chosen = {n: all_params[n].detach() for n in names}

    def f_single(theta, x):
        out = functional_call(model, {**frozen, **theta}, (x.unsqueeze(0),))
        return out.reshape(-1)

    jac = vmap(jacrev(f_single), in_dims=(None, 0))

    def jacobians(sl):  # {name: (n, C, P_name)}
        return {k: v.flatten(2) for k, v in jac(chosen, inputs[sl]).items()}

    n = inputs.shape[0]
    blocks = [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    kernels = None
    for i, rows in enumerate(blocks):
        j_rows = jacobians(rows)
        if kernels is None:
            n_out = next(iter(j_rows.values())).shape[1]
            kernels = {k: _empty_kernel(n, n_out, reduce, v) for k, v in j_rows.items()}
        for cols in blocks[i:]:
            j_cols = j_rows if cols == rows else jacobians(cols)
            for k in names:
                block = _reduce_block(j_rows[k], j_cols[k], reduce)
                kernels[k][rows, cols] = block
                if cols != rows:
                    kernels[k][cols, rows] = block.transpose(0, 1).transpose(-1, -2) if reduce == "full" else block.T
    return kernels


# --------------------------------------------------------------------------- fast path
# A parameter is "owned" when its per-example gradient is a sum over positions t of an
# outer product g_t x_t^T (nn.Linear weight), of g_t (nn.Linear bias), or of g_t placed in
# row ids_t (nn.Embedding weight). Its kernel is then a product of two small Grams.
_FACTORISABLE = {nn.Linear: ("weight", "bias"), nn.Embedding: ("weight",)}


def _owners(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{param_name: (module_name, kind)}``, kind in {"weight", "bias", "embedding"}."""
    owners = {}
    for mod_name, module in model.named_modules():
        for cls, attrs in _FACTORISABLE.items():
            if not isinstance(module, cls):
                continue
            for attr in attrs:
                full = f"{mod_name}.{attr}" if mod_name else attr
                if full in names and getattr(module, attr) is not None:
                    owners[full] = (mod_name, "embedding" if cls is nn.Embedding else attr)
    return owners


def _layer_statistics(model, inputs, module_names, chunk_size):
    """Inputs and output-gradients of the given nn.Linear / nn.Embedding modules.

    Returns ``{module_name: (x, g)}`` with ``x`` the layer inputs, (N, T, in) for a linear
    layer or (N, T) token ids for an embedding, and ``g`` (C, N, T, out) the gradients of
    every model output ``c`` w.r.t. the layer outputs, where ``T`` counts the positions (all
    non-batch, non-feature dims) and repeated calls.
    """
    modules = dict(model.named_modules())
    xs = {m: [] for m in module_names}
    gs = {m: [] for m in module_names}
    n = inputs.shape[0]
    for start in range(0, n, chunk_size):
        x_chunk = inputs[start:start + chunk_size]
        captured = {m: [] for m in module_names}

        def make_hook(name):
            def hook(module, args, output):
                captured[name].append((args[0], output))
            return hook

        handles = [modules[m].register_forward_hook(make_hook(m)) for m in module_names]
        try:
            with torch.enable_grad():
                out = model(x_chunk)
        finally:
            for h in handles:
                h.remove()
        if out.ndim != 2:
            raise ValueError(f"the model must map (N, ...) inputs to (N, C) outputs, got output shape {tuple(out.shape)}")
        for m in module_names:
            if not captured[m]:
                raise ValueError(f"module {m!r} was not called in the forward pass")
        outputs = [y for m in module_names for _, y in captured[m]]
        n_out = out.shape[1]
        per_c = []
        for c in range(n_out):
            grads = torch.autograd.grad(out[:, c].sum(), outputs, retain_graph=c < n_out - 1, allow_unused=True)
            per_c.append([torch.zeros_like(y) if g is None else g for g, y in zip(grads, outputs)])
        k = 0
        for m in module_names:
            calls = captured[m]
            embedding = isinstance(modules[m], nn.Embedding)
            x_cat = torch.cat([x.reshape(y.shape[0], -1) if embedding else x.detach().reshape(y.shape[0], -1, x.shape[-1])
                               for x, y in calls], dim=1)
            g_cat = torch.stack([
                torch.cat([per_c[c][k + i].reshape(y.shape[0], -1, y.shape[-1]) for i, (_, y) in enumerate(calls)], dim=1)
                for c in range(n_out)
            ])
            k += len(calls)
            xs[m].append(x_cat)
            gs[m].append(g_cat)
    return {m: (torch.cat(xs[m], 0), torch.cat(gs[m], 1)) for m in module_names}


def _input_gram(x, kind, module, dtype):
    """(N, T, N, T) Gram of what multiplies the output-gradient; None means all ones."""
    if kind == "weight":
        return torch.einsum("nti,msi->ntms", x, x)
    if kind == "embedding":
        same = x[:, :, None, None] == x[None, None, :, :]
        if module.padding_idx is not None:
            same &= (x != module.padding_idx)[:, :, None, None]
        return same.to(dtype)
    return None


def _layer_kernel(x, g, kind, module, reduce):
    """Kernel of one factorisable parameter from its statistics (see _layer_statistics).

    ``<dW f_c(n), dW f_d(m)> = sum_{t,s} (g_{c,n,t} . g_{d,m,s}) X[n,t,m,s]`` with X the
    input Gram: ``x_{n,t} . x_{m,s}`` for a weight, 1 for a bias, ``[ids_{n,t} == ids_{m,s}]``
    for an embedding.
    """
    x_gram = _input_gram(x, kind, module, g.dtype)
    if reduce == "full":
        g_gram = torch.einsum("cnto,dmso->ntmscd", g, g)
        if x_gram is not None:
            g_gram = g_gram * x_gram[..., None, None]
        return g_gram.sum(dim=(1, 3))
    if reduce == "trace":
        g_gram = torch.einsum("cnto,cmso->ntms", g, g) / g.shape[0]
    else:
        g_mean = g.mean(0)
        g_gram = torch.einsum("nto,mso->ntms", g_mean, g_mean)
    if x_gram is not None:
        g_gram = g_gram * x_gram
    return g_gram.sum(dim=(1, 3))


def _rebuilt_gradient(x, g, kind, module):
    """Batch gradient of the parameter rebuilt from statistics ``x`` and ``g`` (N, T, out)."""
    if kind == "weight":
        return torch.einsum("nto,nti->oi", g, x)
    if kind == "bias":
        return g.sum((0, 1))
    grad = torch.zeros_like(module.weight).index_add_(0, x.reshape(-1), g.reshape(-1, g.shape[-1]))
    if module.padding_idx is not None:
        grad[module.padding_idx] = 0
    return grad


def _factorisation_holds(model, inputs, owners, stats, n_probe=8, rtol=1e-4):
    """Names of the owned parameters whose gradient the (x, g) statistics reproduce.

    The factorisation assumes a parameter is used only inside its own module's call, in
    the standard way. Weight tying (``F.linear(h, fc.weight)`` elsewhere) or a subclass with
    another ``forward`` breaks that silently, so we compare, on a few inputs, the gradient
    of a random combination of the outputs by autograd with the one rebuilt from (x, g).
    """
    probe = inputs[:n_probe]
    params, modules = dict(model.named_parameters()), dict(model.named_modules())
    with torch.enable_grad():
        out = model(probe)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype).to(out.device)
        true = torch.autograd.grad((out * weights).sum(), [params[n] for n in owners], allow_unused=True)
    good = set()
    for (name, (mod_name, kind)), grad in zip(owners.items(), true):
        x, g = stats[mod_name]
        g_probe = torch.einsum("nc,cnto->nto", weights, g[:, : len(probe)])
        rebuilt = _rebuilt_gradient(x[: len(probe)], g_probe, kind, modules[mod_name])
        grad = torch.zeros_like(rebuilt) if grad is None else grad
        if (rebuilt - grad).norm() <= rtol * grad.norm() + 1e-30:
            good.add(name)
    return good


def _fast_contributions(model, inputs, names, reduce, chunk_size):
    owners = _owners(model, names)
    kernels = {}
    if owners:
        modules = dict(model.named_modules())
        stats = _layer_statistics(model, inputs, sorted({m for m, _ in owners.values()}), chunk_size)
        safe = _factorisation_holds(model, inputs, owners, stats)
        owners = {n: owner for n, owner in owners.items() if n in safe}
        for name, (mod_name, kind) in owners.items():
            kernels[name] = _layer_kernel(*stats[mod_name], kind, modules[mod_name], reduce)
    rest = [n for n in names if n not in owners]
    if rest:
        kernels.update(_reference_contributions(model, inputs, rest, reduce, chunk_size))
    return kernels


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
    _check_args(inputs, reduce, method)
    names = resolve_params(model, params)
    if device is not None:
        model = model.to(device)
    inputs = inputs.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    path = "reference" if method == "reference" else "fast"
    chunk_size = chunk_size or DEFAULT_CHUNK[path]
    try:
        if path == "reference":
            kernels = _reference_contributions(model, inputs, names, reduce, chunk_size)
        else:
            kernels = _fast_contributions(model, inputs, names, reduce, chunk_size)
    finally:
        model.train(was_training)
    return {n: kernels[n].detach() for n in names}


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
    chunk_size : inputs per forward/Jacobian chunk (bounds memory); default
        ``DEFAULT_CHUNK[path]``: 64 for the reference path, 1024 for the fast one.
    device : move the model there first (e.g. ``"cuda"``); default: where the model is.

    Returns the kernel as a tensor on the model's device, in the model's dtype.
    """
    kernels = entk_contributions(model, inputs, params, reduce, method=method, chunk_size=chunk_size, device=device)
    return sum(kernels.values())


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
    return {label: sum(contributions[n] for n in names) for label, names in members.items()}
