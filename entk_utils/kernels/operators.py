"""Matrix-free eNTK operators for causal language models too big to materialise the kernel.

For a Hugging Face causal LM, the output studied for context ``n`` is ``h_n in R^d``, the
vector its output embedding (the unembedding) receives at the context's output position:
the final hidden state after the final norm, at the last non-pad token unless positions are
given. The parameters are any set of the model's weights, named as in
``model.named_parameters()`` (one weight, a whole MLP block, weights of several layers; a
module name stands for all its parameters). With ``J`` the (N*d, P) Jacobian over N contexts
(for several weights, their Jacobians side by side, so the kernel is the sum of theirs), the
operator is

    K~ = (I_N kron A) J J^T (I_N kron A),    A = (U^T U)^{1/2},

where ``U`` (V, d) is the unembedding: since the logits are ``U h``, ``K~`` has the nonzero
spectrum of the full-vocabulary logit eNTK ``(I kron U) J J^T (I kron U^T)`` without ever
forming V logits. Where the model caps its logits (``z = c tanh(U h / c)``, Gemma2's
``final_logit_softcapping``), the logit eNTK's geometry differs per context:
``metric="logits"`` then uses ``A_n = (U^T D_n^2 U)^{1/2}`` with ``D_n`` the cap's derivative
at context n's logits, folded into the outputs (``y_n = A_n h_n``, ``.metric`` None), and
``metric="unembedding"`` is refused. Vectors are laid out as an (N, d) row-major array
(context ``n``, hidden unit ``i`` at ``n * d + i``).

**Another output.** ``output=f`` replaces ``h`` by ``f(h, index)`` (n, k): any differentiable
function of the final hidden states ``h`` (n, d) at the output positions and the contexts'
row numbers ``index`` (n,) in ``input_ids`` (to look up per-context data, such as the token
that follows). The operator is then the plain eNTK ``J_f J_f^T`` of that output, (N*k, N*k):
a probe's logit, or the per-example loss, whose kernel is the per-example gradient kernel
of influence-style methods (the README has a worked example).

``K~ @ v`` is one VJP (``J^T``) and one JVP (``J``) with ``torch.func``, chunked over
contexts. How much of the model each runs is the operator's forward path
(:mod:`entk_utils.kernels.forward_paths`; its name is ``.path``): the whole model (``"full"``), from
the lowest analysed decoder layer (``"layer"``), or from the input of the first analysed
module of that layer (``"module"``), each shortcut checked against the full model when the
operator is built.
"""

from __future__ import annotations

import difflib

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn
from torch.func import jvp, vjp

from . import anatomy as model_anatomy
from . import conventions, forward_paths, path_choice
from .anatomy import math_attention
from .token_reading import TokenReading

METRICS = ("unembedding", "logits", "identity")


class _Default(str):
    """The default ``metric``, told apart from an explicit ``"unembedding"``: with ``output=``
    the default means the identity, an explicit metric on ``h`` is an error."""


DEFAULT_METRIC = _Default("unembedding")


def decoder_layers(model: nn.Module, layers=None) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM, found through its conventions
    (``get_decoder()``, ``base_model_prefix``, ``num_hidden_layers``) unless ``layers`` (a
    ModuleList or its name) says."""
    return model_anatomy.find_anatomy(model, layers).layers


def unembedding_metric(model: nn.Module) -> torch.Tensor:
    """``A = (U^T U)^{1/2}`` (d, d) from the output embedding ``U`` (V, d), in float64."""
    return _sqrt_psd(_unembedding(model).T @ _unembedding(model))


def _unembedding(model: nn.Module) -> torch.Tensor:
    return model.get_output_embeddings().weight.detach().to(torch.float64)


def _sqrt_psd(M: torch.Tensor) -> torch.Tensor:
    """Square root of symmetric positive semi-definite matrices (..., d, d)."""
    evals, evecs = torch.linalg.eigh(M)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def logit_softcap(model: nn.Module) -> float | None:
    """The model's final logit softcapping ``c`` (logits ``c tanh(z / c)``), or None."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def weight_names(weights, parameter_names: list[str], model_name: str = "the model") -> list[str]:
    """The parameter names ``weights`` stands for, in the order of ``parameter_names``:
    ``weights`` is a name or a list of names, each a parameter's
    (``"model.layers.3.mlp.down_proj.weight"``) or a module's (all the parameters under it)."""
    names = [weights] if isinstance(weights, str) else weights
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"weights={weights!r}: must be a parameter or module name, or a non-empty list of them")
    chosen = set()
    for name in names:
        under = [p for p in parameter_names if p == name or p.startswith(name + ".")]
        if not under:
            modules = {p.rsplit(".", k)[0] for p in parameter_names for k in range(1, p.count(".") + 1)}
            close = difflib.get_close_matches(name, [*parameter_names, *modules], n=3)
            raise ValueError(f"weights: {model_name} has no parameter or module {name!r}"
                             + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""))
        chosen.update(under)
    return [p for p in parameter_names if p in chosen]


def resolve_weights(model: nn.Module, weights) -> dict[str, nn.Parameter]:
    """``{full name: parameter}`` for ``weights`` (see :func:`weight_names`), all of one dtype."""
    params = dict(model.named_parameters())
    out = {name: params[name] for name in weight_names(weights, list(params), type(model).__name__)}
    dtypes = {p.dtype for p in out.values()}
    if len(dtypes) > 1:
        raise ValueError(f"weights: all must have one dtype, got {sorted(map(str, dtypes))}")
    return out


class ENTKOperator(scipy.sparse.linalg.LinearOperator):
    """``K~`` of a set of weights as a symmetric (N*k, N*k) ``LinearOperator``: k = d for the
    default output ``h``, else the size of ``output(h, index)``.

    Build it with :func:`entk_operator` (or :func:`layer_entk_operator`). ``matvec(v)`` takes
    and returns a float64 vector of length N*k. The weight-space vector is a dict ``{full
    parameter name: tensor shaped like it}`` throughout: ``rmatvec_params`` returns one,
    ``matvec_params`` and :meth:`weight_direction` take / return one.

    Attributes: ``hidden`` (d), ``output_size`` (k), ``output`` (the output function or
    None), ``metric`` ((d, d) ``A`` or None), ``device``, ``dtype_torch``, ``input_ids``
    (N, T), ``attention_mask``, ``positions`` (N,), ``weights`` ({name: tensor}, detached),
    ``path`` (``"full"``, ``"layer"`` or ``"module"``), ``strategy`` (the forward path;
    ``strategy.describe()`` says what it runs), ``n_matvecs`` (products so far).
    """

    def __init__(self, anatomy, contexts, weights: dict[str, torch.Tensor], strategy, metric, chunk_size: int,
                 output=None):
        self.anatomy, self.model, self.layers = anatomy, anatomy.model, anatomy.layers
        self.contexts, self.strategy, self.path = contexts, strategy, strategy.name
        self.weights = {name: w.detach() for name, w in weights.items()}
        first = next(iter(self.weights.values()))
        self.device, self.dtype_torch, self.hidden = first.device, first.dtype, anatomy.hidden
        self.input_ids, self.attention_mask, self.positions = contexts.input_ids, contexts.attention_mask, contexts.positions
        self.metric = None if metric is None else metric.to(self.device, self.dtype_torch)
        self.chunks = [slice(i, min(i + chunk_size, len(contexts))) for i in range(0, len(contexts), chunk_size)]
        self.records = [strategy.record(contexts.inputs(sl)) for sl in self.chunks]
        self.output_maps = None  # (N, d, d) per-context metrics folded into the outputs
        self.output, self.output_size = output, self.hidden
        if output is not None:
            self.output_size = self._output_size()
        self.n_matvecs = 0
        n = len(contexts) * self.output_size
        super().__init__(dtype=np.float64, shape=(n, n))

    # ---------------------------------------------------------------- outputs
    def _output(self, weights: dict, c: int) -> torch.Tensor:
        """The outputs (n_chunk, k) of chunk ``c`` as a function of the weights."""
        sl = self.chunks[c]
        h = forward_paths.hidden(self.anatomy, self.strategy, weights, self.records[c], self.contexts.inputs(sl),
                                 self.positions[sl])
        if self.output is not None:
            index = torch.arange(sl.start, sl.stop, device=h.device)
            return self.output(h, index).reshape(len(index), -1)
        return h if self.output_maps is None else torch.einsum("nij,nj->ni", self.output_maps[sl], h)

    def _output_size(self) -> int:
        """k, from the output function on the first chunk; ``ValueError`` if it does not give
        one floating-point row per context."""
        sl = self.chunks[0]
        with torch.no_grad(), math_attention():
            h = forward_paths.hidden(self.anatomy, self.strategy, self.weights, self.records[0],
                                     self.contexts.inputs(sl), self.positions[sl])
            y = self.output(h, torch.arange(sl.start, sl.stop, device=h.device))
        n = sl.stop - sl.start
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.ndim not in (1, 2) or len(y) != n \
                or y.numel() == 0:
            raise ValueError(f"output(h, index) must return a floating-point tensor (n,) or (n, k) for h ({n}, "
                             f"{self.hidden}), got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        return 1 if y.ndim == 1 else int(y.shape[1])

    def outputs(self) -> torch.Tensor:
        """The outputs (N, k) at the current weights: ``h``, ``A_n h_n`` where a per-context
        metric is folded in, or ``output(h, index)``."""
        with torch.no_grad(), math_attention():
            return torch.cat([self._output(self.weights, c) for c in range(len(self.chunks))])

    def fold_softcap_metric(self, cap: float) -> None:
        """Fold the logit eNTK's per-context metric ``A_n = (U^T D_n^2 U)^{1/2}`` into the
        outputs, ``D_n = diag(1 - tanh^2(z_n / cap))`` at context n's logits ``z_n`` before the
        cap (costs N V d^2 operations and N d^2 memory)."""
        U = _unembedding(self.model).to(self.device)
        bias = getattr(self.anatomy.output_embedding, "bias", None)
        self.output_maps = None
        h = self.outputs().to(torch.float64)
        maps = []
        for n in range(len(h)):
            z = U @ h[n] + (0 if bias is None else bias.detach().to(torch.float64))
            scaled = U * (1 - torch.tanh(z / cap) ** 2)[:, None]
            maps.append(_sqrt_psd(scaled.T @ scaled))
        self.output_maps = torch.stack(maps).to(self.dtype_torch)

    # ---------------------------------------------------------------- J^T and J
    def rmatvec_params(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """``J^T w`` for output-space rows w (N, k) (already multiplied by the metric):
        ``{name: tensor shaped like that weight}``."""
        total = {name: torch.zeros_like(t) for name, t in self.weights.items()}
        with torch.no_grad(), math_attention():
            for c, sl in enumerate(self.chunks):
                _, pullback = vjp(lambda ws: self._output(ws, c), self.weights)
                for name, g in pullback(w[sl])[0].items():
                    total[name] += g
        return total

    def matvec_params(self, u: dict[str, torch.Tensor]) -> torch.Tensor:
        """``J u`` (N, k) for a weight-space vector ``u`` ({name: tensor shaped like it})."""
        if not isinstance(u, dict) or set(u) != set(self.weights):
            raise ValueError(f"u must be a dict with the keys {sorted(self.weights)}, got {sorted(u) if isinstance(u, dict) else type(u).__name__}")
        with torch.no_grad(), math_attention():
            return torch.cat([jvp(lambda ws: self._output(ws, c), (self.weights,), (u,))[1]
                              for c in range(len(self.chunks))])

    def _rows(self, v) -> torch.Tensor:
        """A vector of length N*k as output-space rows (N, k) times the metric."""
        v = torch.as_tensor(np.asarray(v).reshape(-1, self.output_size), dtype=self.dtype_torch, device=self.device)
        return v @ self.metric if self.metric is not None else v

    def _matvec(self, v):
        out = self.matvec_params(self.rmatvec_params(self._rows(v)))
        out = out @ self.metric if self.metric is not None else out
        self.n_matvecs += 1
        return out.reshape(-1).double().cpu().numpy()

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric

    def weight_direction(self, v) -> dict[str, torch.Tensor]:
        """``J^T (I kron A) v`` for a vector ``v`` of length N*d (e.g. an eigenvector of
        ``K~``): the weight change ({name: tensor}) whose first-order effect on the outputs
        is ``J J^T (I kron A) v``, i.e. along ``v`` in the kernel's geometry."""
        return self.rmatvec_params(self._rows(v))


    def token_output_changes(self, step: dict[str, torch.Tensor], input_ids: torch.Tensor,
                             attention_mask: torch.Tensor | None = None, chunk_size: int = 16) -> torch.Tensor:
        """(B, T, d): the first-order change of the output at every position of ``input_ids``
        (B, T), metric applied (``A dh``), when the weights move along ``step`` ({name:
        tensor}, e.g. :meth:`weight_direction`): ``J(x_t) step`` for every prefix ``x_t``.
        :class:`~entk_utils.kernels.token_reading.TokenReading` does it for many steps on the
        same contexts, recording their forward pass once.

        At an operator's context and position this is its row of ``J step``; for
        ``step = J^T (I kron A) v`` with ``v`` an eigenvector of eigenvalue ``lam``, it divided
        by ``lam`` extends ``v`` to every token (the Nystrom extension of the eigenfunction).
        With a per-context metric folded in (a soft-capped model's ``metric="logits"``) or an
        ``output`` function there is no single metric for every token: ``ValueError``."""
        return TokenReading(self, input_ids, attention_mask, chunk_size).changes(step)


LayerENTKOperator = ENTKOperator  # the name before operators took any set of weights


def _resolve_metric(model, anatomy, metric, weights: dict, output=None) -> tuple[torch.Tensor | None, float | None]:
    """``(A or None, softcap to fold per context or None)`` for ``metric`` (with ``output``:
    the default metric is the identity, any other than the identity an error)."""
    if output is not None:
        if not callable(output):
            raise ValueError(f"output must be None or a function output(h, index), got {type(output).__name__}")
        if metric is DEFAULT_METRIC or metric in (None, "identity"):
            return None, None
        raise ValueError(f"metric={metric!r} is a geometry of h, and output= replaces h: the kernel is that of "
                         "output(h, index); leave metric out (or fold a metric into the output function)")
    if metric is None or isinstance(metric, torch.Tensor):
        if metric is not None and tuple(metric.shape) != (anatomy.hidden, anatomy.hidden):
            raise ValueError(f"metric must be a ({anatomy.hidden}, {anatomy.hidden}) tensor, got {tuple(metric.shape)}")
        return metric, None
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}, None or a (d, d) tensor")
    if metric == "identity":
        return None, None
    tied = [name for name, w in weights.items() if w is anatomy.output_embedding.weight]
    if tied:
        raise ValueError(f"{', '.join(tied)} is also the output embedding (tied): through the logits its kernel is not "
                         f"(I kron A) J J^T (I kron A); use metric='identity' (the kernel of h)")
    cap = logit_softcap(model)
    if cap is not None and metric == "unembedding":
        raise ValueError(f"{type(model).__name__} caps its logits (final_logit_softcapping={cap}): the unembedding "
                         "metric is not the logit eNTK's geometry; use metric='logits' (exact, per context) or 'identity'")
    return (None, cap) if cap is not None else (unembedding_metric(model), None)


def entk_operator(
    model: nn.Module,
    input_ids: torch.Tensor,
    weights,
    *,
    attention_mask: torch.Tensor | None = None,
    positions=None,
    model_inputs: dict | None = None,
    output=None,
    metric: str | torch.Tensor | None = DEFAULT_METRIC,
    truncate: bool | str = "auto",
    chunk_size: int = 64,
    layers=None,
    final_norm=None,
) -> ENTKOperator:
    """The matrix-free eNTK operator of a set of weights of a Hugging Face causal LM.

    Parameters
    ----------
    model : a causal LM with an output embedding (``get_output_embeddings()``), any
        architecture and attention implementation (JVPs run under the math SDPA backend);
        used as it is (device, dtype), in eval mode, without keeping gradients.
    input_ids : (N, T) contexts.
    weights : a parameter name (``"model.layers.16.mlp.down_proj.weight"``), a module name
        (all its parameters, e.g. ``"model.layers.16.mlp"``), or a list of them, possibly in
        several layers: the kernel is that of their union (the sum of their kernels).
        ``nn.Linear``, GPT-2's ``Conv1D``, norms, embeddings: any parameter.
    attention_mask : (N, T) 0/1, padding on either side; ``position_ids`` are derived from it.
    positions : (N,) output position per context (default: the last non-pad token).
    model_inputs : further keyword arguments of the model (tensors with one row per context
        are split into the chunks; anything else is passed as it is).
    output : None (default: ``h``, the output embedding's input, in the geometry ``metric``),
        or a function ``output(h, index) -> (n,) or (n, k)`` of the final hidden states ``h``
        (n, d) at the output positions and the contexts' rows ``index`` (n,) in ``input_ids``:
        the kernel is then the plain eNTK of that output (e.g. a probe's logit, or the
        per-example loss with the next tokens looked up by ``index``).
    metric : the geometry of ``h`` (without ``output``): ``"unembedding"`` (default,
        ``A = (U^T U)^{1/2}``), ``"logits"`` (the same, or the exact per-context metric where
        the model caps its logits), ``"identity"`` / ``None`` (the kernel of ``h``), or a
        (d, d) tensor.
    truncate : how much of the model each product runs (all give the same operator; see
        :mod:`entk_utils.kernels.forward_paths`): ``"full"``, ``"layer"``, ``"module"`` insist on a path
        (``ValueError`` naming the path and the weights if it cannot apply or fails its
        probe); ``"auto"`` (default) takes the cheapest that applies and reproduces the full
        model on a probe, with a warning when a shortcut fails it. Before this vocabulary:
        ``True`` = ``"auto"``, ``False`` = ``"full"``, and ``"down_proj"`` insists on the
        module path from an MLP output projection's input.
    chunk_size : contexts per VJP / JVP call (bounds memory).
    layers, final_norm : where the model's conventions do not find them: the decoder layers
        (a ModuleList or its name) and the module(s) between the last layer and the output
        embedding (a module, a name or a list; ``[]`` for none).

    Returns an :class:`ENTKOperator` with ``.shape == (N*k, N*k)`` (k = d without ``output``)
    and ``.matvec(v)``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    mode = truncate_mode(truncate)
    anatomy = model_anatomy.find_anatomy(model, layers, final_norm)
    params = resolve_weights(model, weights)
    A, cap = _resolve_metric(model, anatomy, metric, params, output)
    first = next(iter(params.values()))
    contexts = model_anatomy.make_contexts(model, input_ids, attention_mask, positions, model_inputs, first.device)
    detached = {name: p.detach() for name, p in params.items()}
    strategy = path_choice.choose_path(anatomy, contexts, detached, mode)
    op = ENTKOperator(anatomy, contexts, detached, strategy, A, int(chunk_size), output)
    if cap is not None:
        op.fold_softcap_metric(cap)
    return op


def layer_entk_operator(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    *,
    param: str = "mlp.down_proj.weight",
    metric: str | torch.Tensor | None = DEFAULT_METRIC,
    truncate: bool | str = True,
    chunk_size: int = 64,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> ENTKOperator:
    """:func:`entk_operator` of one weight of one decoder layer: ``param`` relative to layer
    ``layer`` (``0 <= layer < number of layers``), default the MLP's ``down_proj``. Further
    keyword arguments (``positions``, ``model_inputs``, ``output``, ``layers``,
    ``final_norm``) are passed on."""
    weight = conventions.layer_weight(model_anatomy.find_anatomy(model, kwargs.get("layers")), layer, param)
    return entk_operator(model, input_ids, weight, metric=metric, truncate=truncate, chunk_size=chunk_size,
                         attention_mask=attention_mask, **kwargs)


def truncate_mode(truncate) -> str:
    """The forward path mode :func:`entk_operator` asks for: one of
    :data:`~entk_utils.kernels.forward_paths.TRUNCATE_MODES`, or ``"down_proj"``; the legacy
    ``True`` / ``False`` as ``"auto"`` / ``"full"``. ``ValueError`` for anything else."""
    if isinstance(truncate, bool):
        return forward_paths.LEGACY_TRUNCATE[truncate]
    if isinstance(truncate, str) and truncate in (*forward_paths.TRUNCATE_MODES, forward_paths.DOWN_PROJ):
        return truncate
    raise ValueError(f"truncate must be one of {forward_paths.TRUNCATE_MODES} (or, as before them, True, False, "
                     f"'down_proj'), got {truncate!r}")
