"""Matrix-free eNTK operators for models too big to materialise the kernel.

For a Hugging Face causal LM, the output studied is the final hidden state (after the final
norm) at the last position, ``h(x) in R^d``, and the parameters one weight of one decoder
layer (by default ``mlp.down_proj.weight``). With ``J`` the (N*d, P) Jacobian over N
contexts, the operator is

    K~ = (I_N kron A) J J^T (I_N kron A),    A = (U^T U)^{1/2},

where ``U`` (V, d) is the unembedding: since the logits are ``U h``, ``K~`` has the nonzero
spectrum of the full-vocabulary logit eNTK ``(I kron U) J J^T (I kron U^T)`` without ever
forming V = 262k logits. Vectors are laid out as an (N, d) row-major array (context ``n``,
hidden unit ``i`` at ``n * d + i``).

``K~ @ v`` is one VJP (``J^T``) and one JVP (``J``) with ``torch.func``, chunked over
contexts. The layers below the chosen one do not depend on its weight, so with
``truncate="layer"`` the residual stream entering that layer (and the masks / rotary
embeddings each higher layer receives) is recorded once, and every matvec runs only the
layers from there up. The default goes further for ``down_proj`` of Gemma-style layers:
``down_proj`` is linear and its input does not depend on its weight, so the pass starts at
its output; and only the last position of the final layer reaches the output, so that
layer computes one query (keys and values at all positions). The path an operator took is
its ``.path``.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

METRICS = ("unembedding", "identity")
TRUNCATE = (True, False, "layer", "down_proj")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM (``model.model.layers``)."""
    body = getattr(model, "model", model)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)")
    return layers


def unembedding_metric(model: nn.Module) -> torch.Tensor:
    """``A = (U^T U)^{1/2}`` (d, d) from the output embedding ``U`` (V, d), in float64."""
    U = model.get_output_embeddings().weight.detach().to(torch.float64)
    evals, evecs = torch.linalg.eigh(U.T @ U)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def _math_attention():
    """Forward-mode AD does not go through fused SDPA kernels: use the math backend."""
    return sdpa_kernel(SDPBackend.MATH)


class LayerENTKOperator(scipy.sparse.linalg.LinearOperator):
    """``K~`` of one decoder-layer weight as a symmetric (N*d, N*d) ``LinearOperator``.

    Build it with :func:`layer_entk_operator`. ``matvec(v)`` takes and returns a float64
    vector of length N*d; ``n_matvecs`` counts the products so far; ``path`` says how the
    forward pass is run: ``"full-model"``, ``"layer"`` or ``"down_proj"``.
    """

    def __init__(self, model, input_ids, layer, param, metric, truncate, chunk_size, attention_mask):
        self.model = model
        self.layers = decoder_layers(model)
        self.layer, self.param, self.chunk_size = layer, param, chunk_size
        self.device = next(model.parameters()).device
        self.input_ids = input_ids.to(self.device)
        self.attention_mask = None if attention_mask is None else attention_mask.to(self.device)
        self.target = self.layers[layer]
        self.theta = dict(self.target.named_parameters())[param].detach()
        self.dtype_torch = self.theta.dtype
        self.hidden = model.config.hidden_size
        n = len(self.input_ids)
        self.chunks = [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
        self.A = None if metric is None else metric.to(self.device, self.dtype_torch)
        self.n_matvecs = 0
        self.path, self._records = "full-model", None
        if truncate:
            self.path = "layer"
            want_down_proj = truncate in (True, "down_proj")
            if want_down_proj and param == "mlp.down_proj.weight" and all(map(_has_gemma_anatomy, self.layers[layer:])):
                self.path = "down_proj"
            self._records = self._record_inputs(self.path)
            if self.path == "down_proj" and not self._down_proj_path_agrees():
                if truncate == "down_proj":
                    raise ValueError("the down_proj path does not reproduce this model's layers; use truncate='layer'")
                warnings.warn("the down_proj shortcut does not reproduce this model's layers; "
                              "falling back to layer-level truncation", stacklevel=3)
                self.path = "layer"
                self._records = self._record_inputs(self.path)
        super().__init__(dtype=np.float64, shape=(n * self.hidden, n * self.hidden))

    # ---------------------------------------------------------------- recorded inputs
    def _full_name(self):
        prefix = next(name for name, module in self.model.model.named_modules() if module is self.target)
        return f"{prefix}.{self.param}"

    @torch.no_grad()
    def _record_inputs(self, path, chunks=None):
        """Per chunk (all, or the given slices), what the layers from ``layer`` up receive on
        ``path`` ("layer" or "down_proj"), recorded by hooks.

        ``{i: (args, kwargs)}`` for each decoder layer ``i >= layer``, where only the analysed
        layer keeps its hidden-state argument (the others recompute it). On the ``down_proj``
        path the analysed layer instead keeps ``"x"`` (n, T, I), the input of ``down_proj``,
        and ``"residual"`` (n, T, d), the stream the MLP's output is added to; if the analysed
        layer is the last one, only their last position.
        """
        last = len(self.layers) - 1
        records = []
        for sl in self.chunks if chunks is None else chunks:
            seen = {}

            def make_hook(i):
                def hook(module, args, kwargs):
                    seen[i] = (args if i == self.layer and path == "layer" else (None, *args[1:]), kwargs)
                return hook

            handles = [self.layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True)
                       for i in range(self.layer, len(self.layers))]
            if path == "down_proj":
                keep = slice(-1, None) if self.layer == last else slice(None)
                handles.append(self.target.mlp.down_proj.register_forward_pre_hook(
                    lambda module, args: seen.__setitem__("x", args[0][:, keep].clone())))
                handles.append(self.target.pre_feedforward_layernorm.register_forward_pre_hook(
                    lambda module, args: seen.__setitem__("residual", args[0][:, keep].clone())))
            try:
                with _math_attention():
                    self.model.model(**self._model_inputs(sl))
            finally:
                for h in handles:
                    h.remove()
            records.append(seen)
        return records

    def _model_inputs(self, sl):
        kwargs = {"input_ids": self.input_ids[sl], "use_cache": False}
        if self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask[sl]
        return kwargs

    # ---------------------------------------------------------------- forward functions
    def _output(self, theta, chunk_index, path=None, records=None):
        """h (n_chunk, d): final-norm hidden state at the last position, as a function of theta
        (on ``path`` with ``records``; default: the operator's own)."""
        path = path or self.path
        sl = self.chunks[chunk_index]
        if path == "full-model":
            out = functional_call(self.model.model, {self._full_name(): theta}, kwargs=self._model_inputs(sl))
            return out.last_hidden_state[:, -1]
        seen = (self._records if records is None else records)[chunk_index]
        if path == "layer":
            args, kwargs = seen[self.layer]
            hidden = _first(functional_call(self.target, {self.param: theta}, args, kwargs))
            upper = range(self.layer + 1, len(self.layers))
        else:
            # down_proj is linear and the MLP's input does not depend on its weight:
            # the layer's output is residual + post_norm(x W^T), with x and residual recorded.
            mlp_out = seen["x"] @ theta.T
            hidden = seen["residual"] + self.target.post_feedforward_layernorm(mlp_out)
            upper = range(self.layer + 1, len(self.layers) - 1)
        for i in upper:
            args, kwargs = seen[i]
            hidden = _first(self.layers[i](hidden, *args[1:], **kwargs))
        if path == "down_proj" and self.layer < len(self.layers) - 1:
            hidden = _last_position_of_layer(self.layers[-1], hidden, seen[len(self.layers) - 1][1])
        return self.model.model.norm(hidden)[:, -1]

    def _down_proj_path_agrees(self, rtol=1e-4) -> bool:
        """Probe on the first chunk: the ``down_proj`` path's outputs and a JVP of them equal
        those of layer-level truncation (which runs the model's own layer code)."""
        reference_records = self._record_inputs("layer", self.chunks[:1])
        u = torch.randn(self.theta.shape, generator=torch.Generator().manual_seed(0)).to(self.theta)
        with torch.no_grad(), _math_attention():
            h_fast, dh_fast = jvp(lambda t: self._output(t, 0, "down_proj"), (self.theta,), (u,))
            h_ref, dh_ref = jvp(lambda t: self._output(t, 0, "layer", reference_records), (self.theta,), (u,))
        return bool(torch.allclose(h_fast, h_ref, rtol=rtol, atol=rtol * h_ref.abs().max())
                    and torch.allclose(dh_fast, dh_ref, rtol=rtol, atol=rtol * dh_ref.abs().max()))

    # ---------------------------------------------------------------- J^T and J
    def rmatvec_params(self, w: torch.Tensor) -> torch.Tensor:
        """``J^T w`` for w (N, d): a tensor shaped like the weight."""
        total = torch.zeros_like(self.theta)
        for c, sl in enumerate(self.chunks):
            _, pullback = vjp(lambda t: self._output(t, c), self.theta)
            total += pullback(w[sl])[0]
        return total

    def matvec_params(self, u: torch.Tensor) -> torch.Tensor:
        """``J u`` for a weight-shaped u: (N, d)."""
        return torch.cat([jvp(lambda t: self._output(t, c), (self.theta,), (u,))[1] for c in range(len(self.chunks))])

    def _matvec(self, v):
        v = torch.as_tensor(np.asarray(v).reshape(-1, self.hidden), dtype=self.dtype_torch, device=self.device)
        with torch.no_grad(), _math_attention():
            w = v @ self.A if self.A is not None else v
            out = self.matvec_params(self.rmatvec_params(w))
            out = out @ self.A if self.A is not None else out
        self.n_matvecs += 1
        return out.reshape(-1).double().cpu().numpy()

    def _rmatvec(self, v):
        return self._matvec(v)  # symmetric

    def weight_direction(self, v) -> torch.Tensor:
        """``J^T (I kron A) v`` for a vector ``v`` of length N*d (e.g. an eigenvector of
        ``K~``): the weight change (shaped like the weight) whose first-order effect on the
        outputs is ``J J^T (I kron A) v``, i.e. along ``v`` in the kernel's geometry."""
        v = torch.as_tensor(np.asarray(v).reshape(-1, self.hidden), dtype=self.dtype_torch, device=self.device)
        with torch.no_grad(), _math_attention():
            return self.rmatvec_params(v @ self.A if self.A is not None else v)

    def outputs(self) -> torch.Tensor:
        """The outputs h (N, d) at the current weights (for checks)."""
        with torch.no_grad(), _math_attention():
            return torch.cat([self._output(self.theta, c) for c in range(len(self.chunks))])


def _first(output):
    return output[0] if isinstance(output, tuple) else output


GEMMA_ANATOMY = ("input_layernorm", "self_attn", "post_attention_layernorm", "pre_feedforward_layernorm", "mlp",
                 "post_feedforward_layernorm")


def _has_gemma_anatomy(layer: nn.Module) -> bool:
    return all(hasattr(layer, name) for name in GEMMA_ANATOMY) and hasattr(layer.mlp, "down_proj")


def _last_position_of_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """A Gemma-style decoder layer's output at the last position only, (n, 1, d).

    Only the last query is needed there: keys and values are computed at every position,
    the query, attention output and MLP at one. Uses the layer's own modules and its
    modelling file's rotary and eager-attention functions; the caller checks the result
    against the full layer.
    """
    modelling = sys.modules[type(layer).__module__]
    attn = layer.self_attn
    n, t, _ = hidden.shape
    normed = layer.input_layernorm(hidden)
    query = attn.q_norm(attn.q_proj(normed[:, -1:]).view(n, 1, -1, attn.head_dim).transpose(1, 2))
    key = attn.k_norm(attn.k_proj(normed).view(n, t, -1, attn.head_dim).transpose(1, 2))
    value = attn.v_proj(normed).view(n, t, -1, attn.head_dim).transpose(1, 2)
    cos, sin = kwargs["position_embeddings"]
    query, _ = modelling.apply_rotary_pos_emb(query, query, cos[:, -1:], sin[:, -1:])
    _, key = modelling.apply_rotary_pos_emb(key, key, cos, sin)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        mask = mask[..., -1:, :]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    attended, _ = modelling.eager_attention_forward(attn, query, key, value, mask, scaling=attn.scaling,
                                                    sliding_window=attn.sliding_window)
    mixed = attn.o_proj(attended.reshape(n, 1, -1))
    residual = hidden[:, -1:] + layer.post_attention_layernorm(mixed)
    return residual + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(residual)))


def layer_entk_operator(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    *,
    param: str = "mlp.down_proj.weight",
    metric: str | torch.Tensor | None = "unembedding",
    truncate: bool | str = True,
    chunk_size: int = 64,
    attention_mask: torch.Tensor | None = None,
) -> LayerENTKOperator:
    """The matrix-free eNTK operator of one decoder-layer weight of a Hugging Face causal LM.

    Parameters
    ----------
    model : e.g. ``Gemma3ForCausalLM``; any attention implementation (JVPs run under the
        math SDPA backend). It is used as it is (device, dtype); gradients are not kept.
    input_ids : (N, T) contexts, all of length T (no padding unless ``attention_mask``).
    layer : decoder layer index, ``0 <= layer < num_hidden_layers``.
    param : the weight, relative to the layer (default the MLP's ``down_proj``).
    metric : ``"unembedding"`` for ``A = (U^T U)^{1/2}``, ``"identity"`` / ``None`` for
        none, or a (d, d) tensor.
    truncate : how much of the forward pass each matvec runs (all paths give the same operator):
        ``False`` the whole model (as the paper's code); ``"layer"`` the layers from ``layer``
        up, their inputs recorded once; ``True`` (default) the least that is exact: for
        ``mlp.down_proj.weight`` of Gemma-style layers, start at ``down_proj``'s output (it is
        linear and its input does not depend on its weight) and run the last layer at the
        last position only (checked once against ``"layer"`` on a probe, with a fallback
        and a warning if they differ); otherwise as ``"layer"``. ``"down_proj"`` insists on
        the shortcut: ``ValueError`` if the weight or the layers do not fit it, or if the
        probe fails.
    chunk_size : contexts per VJP / JVP call (bounds memory).

    Returns a :class:`LayerENTKOperator` with ``.shape == (N*d, N*d)`` and ``.matvec(v)``.
    """
    layers = decoder_layers(model)
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(layers):
        raise ValueError(f"layer must be an integer in 0..{len(layers) - 1}, got {layer!r}")
    if param not in dict(layers[layer].named_parameters()):
        raise ValueError(f"layer {layer} has no parameter {param!r}; it has {list(dict(layers[layer].named_parameters()))}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be a non-empty (N, T) tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if truncate not in TRUNCATE:
        raise ValueError(f"truncate must be one of {TRUNCATE}, got {truncate!r}")
    if truncate == "down_proj":
        if param != "mlp.down_proj.weight":
            raise ValueError(f"truncate='down_proj' needs param='mlp.down_proj.weight', got {param!r}; "
                             "use truncate='layer'")
        odd = [i for i in range(layer, len(layers)) if not _has_gemma_anatomy(layers[i])]
        if odd:
            raise ValueError(f"truncate='down_proj' needs Gemma-style decoder layers ({', '.join(GEMMA_ANATOMY)}, "
                             f"mlp.down_proj) from layer {layer} up; layers {odd} are not; use truncate='layer'")
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}, None or a (d, d) tensor")
        metric = unembedding_metric(model) if metric == "unembedding" else None
    return LayerENTKOperator(model, input_ids, int(layer), param, metric, truncate, chunk_size, attention_mask)
