"""The fast eNTK path: Gram factorisation of linear and embedding layers.

For the weight (and bias) of every ``nn.Linear`` the per-example gradient of an output is
``sum_t g_t x_t^T`` (``g`` = its gradient w.r.t. the layer's output, the *signal*; ``x`` =
the layer's input), so the kernel is the element-wise product of two Gram matrices and no
Jacobian is formed; an ``nn.Embedding`` is the same with one-hot inputs. Every shortcut is
checked on a probe batch before it is used (see :mod:`entk_utils.kernels.dense`); what
fails goes to the reference path (:mod:`.reference`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..io.hooks import Hooks
from .reference import check_output, reference_contributions

FAST_CHUNK = 1024  # inputs per forward/backward pass (it holds activations, not Jacobians)
PROBE_SIZE = 16  # inputs on which the fast path checks its shortcuts before using them
RTOL = 1e-4  # tolerance of the fast path's checks; a shortcut that does not apply is off by O(1)
# What the factorised kernel of a layer used at T > 1 positions costs per entry of its
# (N T, N T) arrays beyond their matrix products, in multiply-adds: those products have a
# short inner dimension and the arrays are formed, multiplied and reduced in memory, so on
# a 2-core x86 CPU a per-example gradient of up to about this many more entries is as
# fast. It only chooses between two exact formulas (_per_example_is_cheaper).
ELEMENTWISE_COST = 512


# --------------------------------------------------------------------------- fast path: shortcuts
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


def _run_recording(model, x, module_names):
    """Forward ``x`` (n, ...) recording each call of the named modules.

    Returns the output (n, C) and ``{module_name: [(input, output), ...]}`` for the modules
    that were called, keyed in the order of their first call.
    """
    modules = dict(model.named_modules())
    calls = {}

    def recorder(name):
        def hook(module, args, output):
            calls.setdefault(name, []).append((args[0], output))
        return hook

    with Hooks() as hooks, torch.enable_grad():
        for m in module_names:
            hooks.add(modules[m].register_forward_hook(recorder(m)))
        out = model(x)
    return check_output(out), calls


def _backward(z, ys, cotangent, batched=False):
    """Gradients of ``<z, cotangent>`` w.r.t. each tensor in ``ys`` (zeros where unused).

    With ``batched`` the cotangent has a leading axis (k, *z.shape) and so has each result:
    one backward pass for all ``k`` (``is_grads_batched``).
    """
    if not ys:
        return []
    grads = torch.autograd.grad(z, ys, cotangent, retain_graph=True, allow_unused=True, is_grads_batched=batched)
    lead = cotangent.shape[:1] if batched else ()
    return [y.new_zeros(*lead, *y.shape) if g is None else g for g, y in zip(grads, ys)]


def _each_output(out, scale=1.0):
    """Cotangents (C, n, C) selecting each output in turn, times ``scale``."""
    n, c = out.shape
    return (scale * torch.eye(c, dtype=out.dtype, device=out.device)).unsqueeze(1).expand(c, n, c)


def _positions(t, n):
    """A tensor (n, ..., d) as (n, T, d): every non-batch, non-feature axis is a position."""
    return t.reshape(n, -1, t.shape[-1])


def _side_by_side(parts, dim):
    """``torch.cat(parts, dim)``, without a copy for a single part (a module called once)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _layer_inputs(calls, embedding):
    """(n, T, in) inputs, or (n, T) token ids for an embedding, of all calls side by side."""
    n = calls[0][1].shape[0]
    if embedding:
        return _side_by_side([x.reshape(n, -1) for x, _ in calls], 1)
    return _side_by_side([_positions(x.detach(), n) for x, _ in calls], 1)


def _rebuilt_gradient(x, g, kind, module):
    """Batch gradient of the parameter rebuilt from layer inputs ``x`` and signals ``g`` (N, T, out)."""
    if kind == "weight":
        return torch.einsum("nto,nti->oi", g, x)
    if kind == "bias":
        return g.sum((0, 1))
    grad = torch.zeros_like(module.weight).index_add_(0, x.reshape(-1), g.reshape(-1, g.shape[-1]))
    if module.padding_idx is not None:
        grad[module.padding_idx] = 0
    return grad


def _close(a, b):
    return bool(torch.dist(a, b) <= RTOL * b.norm())


def _outputs(calls, layers):
    """The outputs of every call of the given layers, flat, layer by layer."""
    return [y for m in layers for _, y in calls[m]]


def _regroup(grads, calls, layers, n):
    """``{layer: (n, T, out)}`` from gradients w.r.t. :func:`_outputs`, calls side by side."""
    grads = iter(grads)
    return {m: _side_by_side([_positions(next(grads), n) for _ in calls[m]], 1) for m in layers}


def _factorisation_holds(model, out, owners, x, g):
    """Names of the owned parameters whose gradient the probe statistics reproduce.

    The factorisation assumes a parameter is used only inside its own module's call, in
    the standard way. Weight tying (``F.linear(h, fc.weight)`` elsewhere) or a subclass with
    another ``forward`` breaks that silently, so on the probe batch (outputs ``out`` (n, C))
    autograd's gradient of a random combination of the outputs must equal the one rebuilt
    from the layer inputs ``x[layer]`` and per-output signals ``g[layer]`` (C, n, T, out).
    """
    params, modules = dict(model.named_parameters()), dict(model.named_modules())
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype).to(out.device)
    true = _backward(out, [params[p] for p in owners], r)
    return {p for (p, (m, kind)), grad in zip(owners.items(), true)
            if _close(_rebuilt_gradient(x[m], torch.einsum("nc,cnto->nto", r, g[m]), kind, modules[m]), grad)}


def _fold_points(model, out, calls):
    """Where the trace over outputs can fold: ``{point: B}``, ``out = B z`` per example.

    ``None``: ``z`` the output itself, ``B`` the identity. The name of the last ``nn.Linear``
    called, if it is called once on (n, H) inputs: ``z`` its input, ``B = d out / d z``
    (C, H) read on the first example (the checks cover the others).
    """
    points = {None: torch.eye(out.shape[1], dtype=out.dtype, device=out.device)}
    modules = dict(model.named_modules())
    linears = [m for m in calls if isinstance(modules[m], nn.Linear)]
    if linears and len(calls[linears[-1]]) == 1:
        h = calls[linears[-1]][0][0]
        if h.ndim == 2 and h.requires_grad:
            points[linears[-1]] = _backward(out, [h], _each_output(out), batched=True)[0][:, 0]
    return points


def _unit_signals(out, calls, point, layers):
    """``{layer: (n, T, J)}``: the signal of the sum of fold ``point``'s tensor (the output,
    or the readout's input) on each layer's units."""
    z = out if point is None else calls[point][0][0]
    ones = torch.ones((), dtype=z.dtype, device=z.device).expand_as(z)
    return _regroup(_backward(z, _outputs(calls, layers), ones), calls, layers, len(out))


def _choose_folds(out, calls, layers, points, g):
    """Fold each layer at the first point (:func:`_fold_points`) where its units reach the
    point one to one, so that the signal of output ``c`` is ``B[c] * a``, ``a`` that of the
    point's sum: checked on the probe against every per-output signal ``g[layer]`` (C, n, T,
    J). Returns ``{layer: point}``.
    """
    folds = {}
    for point, b in points.items():
        tried = [m for m in layers if m not in folds and all(y.shape[-1] == b.shape[1] for _, y in calls[m])]
        a = _unit_signals(out, calls, point, tried)
        folds.update({m: point for m in tried if _close(b[:, None, None, :] * a[m], g[m])})
    return folds


def _probe(model, inputs, owners, reduce):
    """Check the shortcuts on a probe batch of at most ``PROBE_SIZE`` inputs spread over ``inputs``.

    Returns ``(safe, folds)``: the owned parameters whose gradient the factorisation
    reproduces (a module the forward never calls is left to the reference path), and, for
    ``reduce="trace"``, ``{layer: (point, B)}`` for the layers whose signals fold.
    """
    index = torch.linspace(0, len(inputs) - 1, min(len(inputs), PROBE_SIZE), device=inputs.device).round().long().unique()
    modules = dict(model.named_modules())
    linears = [m for m, mod in modules.items() if isinstance(mod, nn.Linear)] if reduce == "trace" else []
    out, calls = _run_recording(model, inputs[index], sorted({m for m, _ in owners.values()} | set(linears)))
    owners = {p: o for p, o in owners.items() if o[0] in calls}
    layers = sorted({m for m, _ in owners.values()})
    n, c = out.shape
    grads = iter(_backward(out, _outputs(calls, layers), _each_output(out), batched=True))
    g = {m: _side_by_side([next(grads).reshape(c, n, -1, y.shape[-1]) for _, y in calls[m]], 2) for m in layers}
    x = {m: _layer_inputs(calls[m], isinstance(modules[m], nn.Embedding)) for m in layers}
    safe = _factorisation_holds(model, out, owners, x, g)
    if reduce != "trace":
        return safe, {}
    points = _fold_points(model, out, calls)
    folds = _choose_folds(out, calls, sorted({owners[p][0] for p in safe}), points, g)
    return safe, {m: (point, points[point]) for m, point in folds.items()}


def _plain_signals(out, ys, reduce):
    """Signals of ``ys`` (one backward pass), each as (n, T, out) or (n, T, C, out).

    ``reduce="mean"``: of the mean output, (n, T, out). Otherwise of each output, (n, T, C,
    out), times ``1/sqrt(C)`` for ``"trace"`` so that their Gram is the mean over outputs.
    """
    n, c = out.shape
    if reduce == "mean":
        return [_positions(g, n) for g in _backward(out, ys, torch.full_like(out, 1 / c))]
    grads = _backward(out, ys, _each_output(out, c**-0.5 if reduce == "trace" else 1.0), batched=True)
    return [g.reshape(c, n, -1, g.shape[-1]).permute(1, 2, 0, 3) for g in grads]


def _folded_signals(out, calls, folds, r):
    """Fold signals (n, T, J) of the folded layers, and the layers whose fold fails here.

    With ``a`` the unit signals (:func:`_unit_signals`), the trace's Gram over outputs is
    that of ``a * sqrt(sum_c B[c]**2 / C)``. The check, on every input: the signal of the
    random combination ``r`` (n, C) of the outputs must equal ``(r B) * a``.
    Returns ``({layer: signal}, failed layers)``.
    """
    layers = list(folds)
    mixed = _regroup(_backward(out, _outputs(calls, layers), r), calls, layers, len(out))
    signals = {}
    for point in dict.fromkeys(p for p, _ in folds.values()):
        members = [m for m in layers if folds[m][0] == point]
        b = folds[members[0]][1]
        a = _unit_signals(out, calls, point, members)
        rb, weight = (r @ b)[:, None, :], (b.square().sum(0) / b.shape[0]).sqrt()
        signals.update({m: a[m] * weight for m in members if _close(rb * a[m], mixed[m])})
    return signals, set(layers) - set(signals)


def _store(buffers, key, rows, n, parts):
    """Write one chunk's parts (rows, T_k, ...) side by side into ``buffers[key]``
    (n, sum_k T_k, ...), allocated at the first chunk (a single part covering all ``n``
    rows is kept as it is)."""
    if len(parts) == 1 and len(parts[0]) == n:
        buffers[key] = parts[0]
        return
    if key not in buffers:
        buffers[key] = parts[0].new_empty((n, sum(p.shape[1] for p in parts), *parts[0].shape[2:]))
    offset = 0
    for part in parts:
        buffers[key][rows, offset:offset + part.shape[1]] = part
        offset += part.shape[1]


def _collect(model, inputs, layers, folds, reduce, chunk_size):
    """Inputs and signals of the given layers on all inputs, chunk by chunk.

    Returns ``({layer: (x, s)}, rejected)``: ``x`` (N, T, in) layer inputs, or (N, T) token
    ids for an embedding; ``s`` the signals (:func:`_plain_signals`, or for a folded layer
    (N, T, J) from :func:`_folded_signals`); ``rejected`` the folded layers whose fold
    failed on some chunk (left out of the result).
    """
    modules = dict(model.named_modules())
    watched = sorted(set(layers) | {p for p, _ in folds.values() if p is not None})
    plain = [m for m in layers if m not in folds]
    generator = torch.Generator().manual_seed(0)
    n = len(inputs)
    xs, ss, rejected = {}, {}, set()
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        out, calls = _run_recording(model, inputs[rows], watched)
        missing = [m for m in watched if m not in calls]
        if missing:
            raise ValueError(f"modules {missing} are called for some inputs but not for inputs {rows.start}..{rows.stop - 1}")
        signals = iter(_plain_signals(out, _outputs(calls, plain), reduce))
        r = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
        folded, failed = _folded_signals(out, calls, folds, r) if folds else ({}, set())
        rejected |= failed
        for m in layers:
            if m not in failed:
                _store(xs, m, rows, n, [_layer_inputs(calls[m], isinstance(modules[m], nn.Embedding))])
                _store(ss, m, rows, n, [folded[m]] if m in folds else [next(signals) for _ in calls[m]])
    return {m: (xs[m], ss[m]) for m in layers if m not in rejected}, rejected


# --------------------------------------------------------------------------- fast path: kernels
def _input_gram(x, kind, module, dtype):
    """(N T, N T) Gram of what multiplies the signals: the layer inputs for a weight,
    ``[ids equal and not padding]`` for an embedding."""
    if kind == "weight":
        flat = x.reshape(-1, x.shape[-1])
        return flat @ flat.T
    ids = x.reshape(-1)
    same = ids[:, None] == ids[None, :]
    if module.padding_idx is not None:
        same &= (ids != module.padding_idx)[:, None]
    return same.to(dtype)


def _input_width(x, kind, module):
    """Rows of the per-example gradient: input features of a weight, vocabulary of an embedding."""
    return x.shape[-1] if kind == "weight" else module.num_embeddings


def _per_example_is_cheaper(t, width, f):
    """Whether per-example gradients (N, width * f) cost less than (N T, N T) Grams.

    Per example the gradient is ``width x f`` (``f`` signal entries per position); its Gram
    costs ``N^2 width f`` multiply-adds, the factorised one ``(N T)^2 (width + f)`` plus
    element-wise passes over (N T)^2 entries. Only for ``t > 1`` can the former win.
    """
    return t > 1 and width * f <= t * t * (width + f + ELEMENTWISE_COST)


def _per_example_gradient(x, s, kind, module):
    """(N, width * f) per-example gradients ``sum_t s_t x_t^T`` from inputs ``x`` (N, T, in)
    (or token ids (N, T)) and signals ``s`` (N, T, f)."""
    if kind == "embedding":  # the layer's input is one-hot; the padding row gets no gradient
        x = nn.functional.one_hot(x, module.num_embeddings).to(s.dtype)
        if module.padding_idx is not None:
            x[..., module.padding_idx] = 0
    return torch.bmm(x.transpose(1, 2), s).reshape(len(s), -1)


def _live_positions(x, s):
    """``x``, ``s`` without the positions whose signal is zero on every input (a query or an
    MLP input at a position the readout never sees): they contribute nothing."""
    if s.shape[1] > 1:
        live = (s.reshape(*s.shape[:2], -1).count_nonzero((0, 2)) > 0).nonzero()[:, 0].tolist()
        if len(live) < s.shape[1]:  # a range of positions (usually the last) is a view, not a copy
            keep = slice(live[0], live[-1] + 1) if live and live[-1] - live[0] + 1 == len(live) else live
            return x[:, keep], s[:, keep]
    return x, s


def _full_kernel(x, s, kind, module):
    """(N, N, C, C) kernel of one owned parameter from per-output signals ``s`` (N, T, C, out)."""
    n, t, c = s.shape[:3]
    if kind == "bias":
        s, x_gram, t = s.sum(1, keepdim=True), None, 1
    else:
        x_gram = _input_gram(x, kind, module, s.dtype).view(n, t, n, t)
    kernel = s.new_zeros(n, n, c, c)
    for i in range(t):
        for j in range(t):
            block = torch.einsum("nco,mdo->nmcd", s[:, i], s[:, j])
            kernel += block if x_gram is None else block * x_gram[:, i, :, j, None, None]
    return kernel


def _factorised_kernel(x, s, kind, module, reduce):
    """Kernel of one owned parameter from its layer's inputs ``x`` and signals ``s`` (:func:`_collect`).

    ``K[n, m] = sum_{t,t'} X[n,t,m,t'] <s[n,t], s[m,t']>`` with X the input Gram (1 for a
    bias), as the product of the two Grams, or, where cheaper, as the Gram of per-example
    gradients. Returns (N, N), or (N, N, C, C) for ``reduce="full"``.
    """
    x, s = _live_positions(x, s)
    if reduce == "full":
        return _full_kernel(x, s, kind, module)
    n, t = s.shape[:2]
    if t == 0:  # the signal is zero on every input
        return s.new_zeros(n, n)
    s = s.reshape(n, t, -1)
    if kind == "bias":  # X = 1: sum the signal over positions first
        z = s.sum(1)
        return z @ z.T
    if _per_example_is_cheaper(t, _input_width(x, kind, module), s.shape[2]):
        z = _per_example_gradient(x, s, kind, module)
        return z @ z.T
    x_gram = _input_gram(x, kind, module, s.dtype)
    # a linear readout's signal is the same for every input: its kernel is a multiple of X
    if t == 1 and torch.equal(s[0], s[-1]) and torch.equal(s, s[:1].expand_as(s)):
        return x_gram.mul_(s[0].square().sum())
    flat = s.reshape(n * t, -1)
    gram = (flat @ flat.T).mul_(x_gram)
    return gram.view(n, t, n, t).sum((1, 3)) if t > 1 else gram


def fast_contributions(model, inputs, names, reduce, chunk_size):
    """Per-parameter kernels: the Gram factorisation where its checks pass, else the reference."""
    owners = _owners(model, names)
    kernels = {}
    if owners:
        safe, folds = _probe(model, inputs, owners, reduce)
        owners = {n: o for n, o in owners.items() if n in safe}
        layers = sorted({m for m, _ in owners.values()})
        chunk = chunk_size or FAST_CHUNK
        stats, rejected = _collect(model, inputs, layers, folds, reduce, chunk) if layers else ({}, set())
        if rejected:
            stats.update(_collect(model, inputs, sorted(rejected), {}, reduce, chunk)[0])
        modules = dict(model.named_modules())
        for name, (layer, kind) in owners.items():
            kernels[name] = _factorised_kernel(*stats[layer], kind, modules[layer], reduce)
    rest = [n for n in names if n not in kernels]
    if rest:
        kernels.update(reference_contributions(model, inputs, rest, reduce, chunk_size))
    return kernels
