"""Sparse autoencoders (SAEs) as a source of directions, through SAELens.

* :func:`load_published_sae`: a published SAE by release and id from SAELens' registry (Gemma
  Scope 2 covers Gemma-3-270M: release :data:`GEMMA_SCOPE_RELEASE`, ids such as
  ``layer_16_width_16k_l0_small``). The files are fetched with ``huggingface_hub`` by
  :func:`hub_files_converter`, which also reads them from the Hub cache when offline;
  SAELens' own Gemma Scope 2 converter asks the Hub for the tensor shapes over HTTP even when
  the files are cached, so it cannot load offline.
* :func:`train_sae`: a TopK SAE trained on cached activations by SAELens' ``SAETrainer``
  (on any device, the CPU included), with its quality on held-out activations
  (:func:`sae_quality`: fraction of variance explained, L0, dead latents).
* :func:`sae_latents`: the (N, d_sae) latent activations of inputs, the per-context scores
  that :mod:`.finders` hands to the scoring.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..io import checks

GEMMA_SCOPE_RELEASE = "gemma-scope-2-270m-pt-res-all"
GEMMA_SCOPE_REPO = "google/gemma-scope-2-270m-pt"


# --------------------------------------------------------------------------- published SAEs
def hub_files_converter(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                        cfg_overrides: dict | None = None):
    """An SAELens converter for Gemma Scope 2 residual-stream SAEs (JumpReLU): reads
    ``<folder_name>/params.safetensors`` (``w_enc`` (d_in, d_sae), ``w_dec`` (d_sae, d_in),
    ``b_enc``, ``b_dec``, ``threshold``) and, if present, ``<folder_name>/config.json`` with
    ``huggingface_hub.hf_hub_download`` (from the Hub cache when ``HF_HUB_OFFLINE=1``).
    Returns SAELens' ``(cfg_dict, state_dict, log_sparsity=None)``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors.torch import load_file

    params = load_file(hf_hub_download(repo_id, "params.safetensors", subfolder=folder_name,
                                       force_download=force_download), device=str(device))
    try:
        with open(hf_hub_download(repo_id, "config.json", subfolder=folder_name, force_download=force_download)) as f:
            raw = json.load(f)
    except EntryNotFoundError:
        raw = {}
    if raw.get("architecture", "jump_relu") != "jump_relu":
        raise ValueError(f"{repo_id}/{folder_name} is a {raw['architecture']!r} SAE; this converter reads jump_relu")
    missing = {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"} - set(params)
    if missing:
        raise ValueError(f"{repo_id}/{folder_name}/params.safetensors lacks {sorted(missing)}")
    d_in, d_sae = params["w_enc"].shape
    layer = folder_name.rsplit("layer_", 1)[-1].split("_", 1)[0]
    cfg = {"architecture": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
           "device": str(device), "model_name": raw.get("model_name", repo_id.replace("gemma-scope-2", "gemma-3")),
           "hook_name": f"blocks.{layer}.hook_resid_post", "hook_head_index": None, "prepend_bos": True,
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
           "hf_hook_name": raw.get("hf_hook_point_in", f"model.layers.{layer}.output")}
    cfg.update(cfg_overrides or {})
    state = {"W_enc": params["w_enc"], "W_dec": params["w_dec"], "b_enc": params["b_enc"],
             "b_dec": params["b_dec"], "threshold": params["threshold"]}
    return cfg, state, None


class PublishedSAEUnavailable(FileNotFoundError):
    """A published SAE whose files are not in the Hugging Face Hub cache while the Hub cannot be
    reached (offline, ``HF_HUB_OFFLINE=1``, or no connection); raised by :func:`load_published_sae`
    from huggingface_hub's error."""


def load_published_sae(release: str = GEMMA_SCOPE_RELEASE, sae_id: str = "layer_16_width_16k_l0_small", *,
                       device: str = "cpu"):
    """A published SAE from SAELens' registry (``release``, ``sae_id``), its files through
    :func:`hub_files_converter` (Hub, or the Hub cache offline). ``ValueError`` naming valid
    ids for an unknown one (SAELens' message); :class:`PublishedSAEUnavailable` (a
    ``FileNotFoundError``) naming the id and the cache folder when its files are not cached and
    the Hub cannot be reached."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device, converter=hub_files_converter)
    except (LocalEntryNotFoundError, ConnectionError) as error:  # not cached and no Hub (OfflineModeIsEnabled, ...)
        why = ("offline mode: HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE
               else type(error.__cause__ or error).__name__)
        raise PublishedSAEUnavailable(
            f"SAE {release}/{sae_id} is not in the Hugging Face Hub cache {constants.HF_HUB_CACHE} and the Hub "
            f"could not be reached ({why}): run once online to download it there, or give a folder saved by "
            f"SAELens (sae.save_model(folder)) instead of '{release}/{sae_id}'") from error


def load_sae(path, *, device: str = "cpu"):
    """An SAE saved by SAELens (``sae.save_model(path)``: ``cfg.json`` and weights)."""
    from sae_lens import SAE

    return SAE.load_from_disk(path, device=device)


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class SAERecipe:
    """How :func:`train_sae` trains a TopK SAE: ``width`` latents, ``k`` active per input,
    ``tokens`` training samples (activations drawn in a seeded order, ``passes`` over the data
    if that is more than there are), batches of ``batch_size``, Adam at ``lr`` with a linear
    decay over the last fifth; ``held_out`` activations (a seeded random subset) are kept out of
    training to measure the SAE (:func:`sae_quality`). A residual stream can carry a
    constant part far larger than its variation (Gemma-3's at layer 16: a mean of norm 3e4,
    almost all in one coordinate, against 1e4 of variation around it), so during training
    the activations are rescaled to a mean *centred* norm of sqrt(d) (SAELens'
    ``expected_average_only_in`` rescales the raw norm, which would shrink the variation to a
    sliver) and the decoder bias starts at their mean; the scale is folded back into the
    weights afterwards."""

    width: int = 4096
    k: int = 32
    tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    held_out: int = 8192
    seed: int = 0

    def check(self, n_activations: int | None = None, names: dict[str, str] | None = None) -> None:
        """``ValueError`` in one line naming the first field that cannot work (for
        ``n_activations`` inputs, where given); ``names`` spells fields as the caller does (e.g.
        a notebook's ``{"width": "sae_width"}``; default ``SAERecipe.<field>``)."""
        name = {f: (names or {}).get(f, f"SAERecipe.{f}") for f in ("width", "k", "tokens", "batch_size", "held_out",
                                                                      "lr", "seed")}
        for field in ("width", "k", "tokens", "batch_size", "held_out"):
            checks.integer(name[field], getattr(self, field), minimum=1)
        checks.integer(name["k"], self.k, maximum=self.width, note=f" ({name['width']})")
        checks.real(name["lr"], self.lr, minimum=0, low_open=True)
        checks.integer(name["seed"], self.seed, minimum=0)
        if n_activations is not None and n_activations < self.held_out + self.batch_size:
            raise ValueError(f"{n_activations} activations cannot hold {name['held_out']}={self.held_out} plus one "
                             f"batch of {self.batch_size}; use more text or smaller {name['held_out']} / "
                             f"{name['batch_size']}")


@dataclass
class TrainedSAE:
    """What :func:`train_sae` returns: the inference ``sae`` (SAELens ``TopKSAE``), its
    ``quality`` on the held-out activations (:func:`sae_quality`) and the ``recipe`` (None for an
    SAE loaded rather than trained here)."""

    sae: object
    quality: dict
    recipe: SAERecipe | None  # None for a published or saved SAE


def _batches(train: torch.Tensor, recipe: SAERecipe, rng: np.random.Generator, scale: float):
    """Endless batches of ``train`` rows times ``scale``, a fresh seeded permutation per pass."""
    while True:
        order = torch.from_numpy(rng.permutation(len(train)))
        for start in range(0, len(order) - recipe.batch_size + 1, recipe.batch_size):
            yield train[order[start:start + recipe.batch_size]].float() * scale


def train_sae(activations: torch.Tensor, recipe: SAERecipe = SAERecipe(), *, device: str = "cpu") -> TrainedSAE:
    """Train a TopK SAE (SAELens ``TopKTrainingSAE`` + ``SAETrainer``) on ``activations`` (M, d)
    as ``recipe`` says; same recipe and data, same SAE (on one device and thread count)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    X = torch.as_tensor(activations)
    if X.ndim != 2 or not torch.isfinite(X).all():
        raise ValueError(f"activations must be a finite (M, d) matrix, got shape {tuple(X.shape)}")
    recipe.check(len(X))
    rng = np.random.default_rng(recipe.seed)
    held = torch.from_numpy(np.sort(rng.choice(len(X), recipe.held_out, replace=False)))
    keep = torch.ones(len(X), dtype=torch.bool)
    keep[held] = False
    train = X[keep]
    mean = train.double().mean(0)
    scale = math.sqrt(X.shape[1]) / float((train.double() - mean).norm(dim=1).mean())
    torch.manual_seed(recipe.seed)
    cfg = TopKTrainingSAEConfig(d_in=X.shape[1], d_sae=recipe.width, k=recipe.k, device=str(device),
                                normalize_activations="none", apply_b_dec_to_input=True)
    sae = TopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.b_dec.copy_((mean * scale).to(sae.b_dec))
    steps = recipe.tokens // recipe.batch_size
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * recipe.batch_size,
                                   train_batch_size_samples=recipe.batch_size, lr=recipe.lr, lr_end=0.0,
                                   lr_scheduler_name="constant", lr_decay_steps=steps // 5, device=str(device),
                                   dead_feature_window=max(1, steps // 4), feature_sampling_window=max(1, steps // 2))
    trained = SAETrainer(trainer_cfg, sae, _batches(train, recipe, rng, scale)).fit()  # SAELens draws a progress bar
    trained.fold_activation_norm_scaling_factor(scale)
    inference = _to_inference(trained)
    return TrainedSAE(sae=inference, quality=sae_quality(inference, X[held]), recipe=recipe)


def _to_inference(training_sae):
    """The inference SAE (``TopKSAE``) of a trained ``TopKTrainingSAE``, through SAELens' own
    saving and loading (a temporary folder)."""
    import tempfile

    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as folder:
        training_sae.save_inference_model(folder)
        return SAE.load_from_disk(folder, device=str(training_sae.device))


# What a trained SAE depends on besides its data and recipe (for cache keys).
TRAINING_CODE = (train_sae, _batches, _to_inference, SAERecipe, TrainedSAE)


@torch.no_grad()
def sae_quality(sae, activations: torch.Tensor, batch_size: int = 4096) -> dict:
    """How well ``sae`` reconstructs ``activations`` (M, d): ``fve`` = 1 - sum |x - x_hat|^2 /
    sum |x - mean x|^2 (fraction of variance explained), ``l0`` = mean number of active latents
    per input, ``dead`` = latents never active on these M inputs (and ``dead_fraction``),
    ``n`` = M."""
    X = torch.as_tensor(activations).float()
    err = var = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    mean = X.mean(0)
    for start in range(0, len(X), batch_size):
        x = X[start:start + batch_size].to(sae.device)
        z = sae.encode(x)
        err += float(((sae.decode(z) - x) ** 2).sum())
        var += float(((x - mean.to(x.device)) ** 2).sum())
        active = z != 0
        l0 += float(active.sum())
        fired |= active.any(0).cpu()
    dead = int((~fired).sum())
    return {"fve": 1 - err / var, "l0": l0 / len(X), "dead": dead, "dead_fraction": dead / sae.cfg.d_sae, "n": len(X)}


@torch.no_grad()
def sae_latents(sae, activations, batch_size: int = 4096) -> np.ndarray:
    """(N, d_sae) latent activations of ``activations`` (N, d_in): per-context scores, one
    column per latent."""
    X = torch.as_tensor(np.asarray(activations), dtype=torch.float32)
    if X.ndim != 2 or X.shape[1] != sae.cfg.d_in:
        raise ValueError(f"activations must be (N, {sae.cfg.d_in}) for this SAE, got shape {tuple(X.shape)}")
    return torch.cat([sae.encode(X[i:i + batch_size].to(sae.device)).cpu()
                      for i in range(0, len(X), batch_size)]).numpy().astype(np.float64)


def describe_sae(sae) -> str:
    """``"TopK SAE, 4096 latents"`` / ``"JumpReLU SAE, 16384 latents"``: its kind and width."""
    kind = {"topk": "TopK", "jumprelu": "JumpReLU"}.get(sae.cfg.architecture(), sae.cfg.architecture())
    return f"{kind} SAE, {sae.cfg.d_sae} latents"



def decoder_rows(sae) -> np.ndarray:
    """(d_sae, d_in) the SAE's decoder directions, unit length: where each latent writes."""
    W = sae.W_dec.detach().double().cpu().numpy()
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-30)
