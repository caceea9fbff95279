"""The two modular-addition models, as the eNTK paper's code runs them, and their seeded
initialisations.

* :class:`GromovMLP`, the MLP of Gromov, "Grokking modular arithmetic" (2023): input
  ``concat(one_hot(a), one_hot(b))``, a bias-free linear layer scaled by ``1/sqrt(2p)``, the
  activation ``x**2`` and a bias-free readout scaled by ``1/width``, all weights ``N(0, 1)``.
* :class:`OneLayerTransformer`, the 1-layer Transformer of Nanda et al. (2023), with
  :func:`paper_transformer_init` drawing its weights as the authors' code does.

:func:`hidden_activations` reads the hidden layer of either (what the PCA baseline and the
causal tests use).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...io.checks import check_modulus
from ...io.hooks import Hooks


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


def build_seeded(make, seed: int):
    """Build a module under ``torch.manual_seed(seed)`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A fresh, untrained model of the same architecture and size, initialised under ``seed``
    (on the same device, eval mode): the kernel "with the data but not the learned features"."""
    if not hasattr(model, "init_args"):
        raise ValueError(f"{type(model).__name__} does not record its constructor arguments (init_args)")
    fresh = build_seeded(lambda: type(model)(**model.init_args), seed)
    return fresh.to(next(model.parameters()).device).eval()


def hidden_activations(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The hidden layer (N, h) of a modular-addition model over ``inputs``, detached.

    * :class:`GromovMLP`: the ``width`` units after the ``x**2``
      nonlinearity (the input of ``fc2``), inputs (N, 2p).
    * :class:`OneLayerTransformer`: the ``d_mlp`` ReLU activations at
      the last position (``forward(tokens, return_mlp=True)``), inputs (N, 3).

    Any other model raises ``ValueError``.
    """
    if isinstance(model, GromovMLP):
        captured = []
        with Hooks() as hooks, torch.no_grad():
            hooks.add(model.fc2.register_forward_pre_hook(lambda _module, args: captured.append(args[0])))
            model(inputs)
        return captured[0].detach()
    if isinstance(model, OneLayerTransformer):
        with torch.no_grad():
            _, mlp = model(inputs, return_mlp=True)
        return mlp.detach()
    raise ValueError(f"hidden_activations does not know {type(model).__name__}; supported models: GromovMLP, "
                     "OneLayerTransformer")
