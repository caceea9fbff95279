"""The notebooks' parameters: the names each declares, checks of the names a runner passes
on, and one validator per notebook that checks every value before any work starts.

* :func:`declared_parameters` reads the names (and default values) assigned in a notebook's
  cell tagged ``parameters``; :func:`check_parameter_names` rejects any other name, also
  inside the dict parameters a notebook passes on to another notebook or function
  (:data:`FORWARDED`). ``make figures PROFILE=...`` runs
  ``python -m entk_utils.experiments.parameters check-profile NOTEBOOK YAML`` for every notebook first.
* ``check_*_notebook`` validate a notebook's values: call one right after the parameters
  cell (and after ``out_dir`` / ``cache_dir`` take their defaults), as
  ``parameters.check_mlp_notebook(globals())``. Each raises one ``ValueError`` (or
  ``FileNotFoundError``) on the first problem, in one line naming the parameter, the value
  and what is allowed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..features.significance import check_reachable
from ..io import checks
from ..io.notebooks import check_declared, declared_parameters
from ..kernels import operators
from ..settings import language, modular
from ..settings.modular import MLPRecipe, Recipe, TransformerRecipe
from . import baselines, toy

# Notebook 01 compares the fast kernel with the torch.func one on this many of the p*p
# inputs, notebook 02 on this many: p*p must be at least as large.
MLP_KERNEL_CHECK_INPUTS = 96
TRANSFORMER_KERNEL_CHECK_INPUTS = 64
# eigen.find_cliffs needs a spectrum of at least this many eigenvalues.
MIN_SPECTRUM = 3

# Dict parameters that a notebook passes on: {notebook: {parameter: (target, names the
# notebook sets itself)}}, the target being another notebook (by name) or a function.
FORWARDED: dict[str, dict[str, tuple[str | Callable, tuple[str, ...]]]] = {
    "04_seeds": {"mlp_parameters": ("01_mlp_modular_addition", ("seed", "split_seed", "out_dir", "cache_dir")),
                 "transformer_parameters": ("02_transformer_modular_addition", ("seed", "split", "out_dir", "cache_dir"))},
    "05_causal": {"mlp_parameters": (MLPRecipe, ()), "transformer_parameters": (TransformerRecipe, ())},
}


# --------------------------------------------------------------------------- names


def _valid_names(target: str | Callable, notebook: Path, set_by_caller: tuple[str, ...]) -> set[str]:
    """The names ``target`` takes (a training recipe's fields and old names, a function's
    keywords, or the parameters of the notebook of that name beside ``notebook``, in the
    same format), less those its caller sets."""
    if isinstance(target, type) and issubclass(target, Recipe):
        names = set(target.names())
    elif callable(target):
        names = {n for n, p in inspect.signature(target).parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    else:
        names = set(declared_parameters(notebook.with_name(target + notebook.suffix)))
    return names - set(set_by_caller)


def _target_name(target: str | Callable) -> str:
    return f"notebook {target}.ipynb" if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"


def check_forwarded(notebook: str | os.PathLike, name: str, value: Any) -> None:
    """If ``notebook`` passes its dict parameter ``name`` on (:data:`FORWARDED`), check that
    ``value`` is a dict whose keys the receiver declares (``ValueError`` listing them)."""
    notebook = Path(notebook)
    if name not in FORWARDED.get(notebook.stem, {}):
        return
    target, set_by_caller = FORWARDED[notebook.stem][name]
    if not isinstance(value, Mapping):
        raise checks.fail(name, value, f"a dict of parameters for {_target_name(target)}")
    checks.known_names(value, _valid_names(target, notebook, set_by_caller),
                       f"{_target_name(target)} (in {name} of {notebook.name})")


def check_parameter_names(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``parameters`` holds a name that ``notebook`` does not
    declare, or a dict parameter passed on to another notebook or function holds a name
    that one does not take; the message lists the valid names."""
    notebook = Path(notebook)
    check_declared(notebook, parameters)
    for name, value in parameters.items():
        check_forwarded(notebook, name, value)


def check_profile(notebook: str | os.PathLike, profile: str | os.PathLike) -> dict[str, Any]:
    """Read the YAML ``profile`` (a mapping of parameters) and check its names against
    ``notebook`` (:func:`check_parameter_names`). Returns the parameters."""
    import yaml

    profile = Path(profile)
    values = yaml.safe_load(profile.read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise ValueError(f"profile {profile} must be a mapping of parameter names to values, got {type(values).__name__}")
    try:
        check_parameter_names(notebook, values)
    except ValueError as err:
        raise ValueError(f"profile {profile}: {err}") from None
    return values


def main(argv: list[str] | None = None) -> int:
    """``python -m entk_utils.experiments.parameters check-profile NOTEBOOK YAML``: exit 0 if the
    profile's names are the notebook's, else print the error and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m entk_utils.experiments.parameters", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-profile", help="check that a YAML profile names only the notebook's parameters")
    check.add_argument("notebook")
    check.add_argument("profile")
    args = parser.parse_args(argv)
    try:
        values = check_profile(args.notebook, args.profile)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.profile}: {len(values)} parameter(s) of {Path(args.notebook).name}")
    return 0


# --------------------------------------------------------------------------- values
def renamed(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of a renamed notebook parameter: the old name's where one was given (with a
    ``FutureWarning`` saying the new name), else the new name's."""
    if old_value is None:
        return new_value
    warnings.warn(f"the parameter {old} is now called {new}; {old}={old_value!r} is taken as {new}", FutureWarning,
                  stacklevel=2)
    return old_value


def _gather(values: Mapping[str, Any] | None, kwargs: dict[str, Any], names: tuple[str, ...],
            notebook: str) -> dict[str, Any]:
    """The values of ``names`` (all required but the old names of the recipes' fields, which
    default to None) from ``values`` (e.g. ``globals()``, other entries ignored) and
    ``kwargs`` (every key must be one of ``names``)."""
    checks.known_names(kwargs, names, f"the validator of notebook {notebook}")
    old_names = {*MLPRecipe.RENAMED, *TransformerRecipe.RENAMED}
    merged = {**{old: None for old in old_names if old in names}, **(values or {}), **kwargs}
    missing = [n for n in names if n not in merged]
    if missing:
        raise ValueError(f"missing parameter(s) {', '.join(missing)} of notebook {notebook}")
    return {n: merged[n] for n in names}


def _check_modulus_feasible(p: int, inputs: int, notebook: str) -> None:
    if p * p < inputs:
        raise checks.fail("p", p, f"an odd prime with p*p >= {inputs}: notebook {notebook} checks its kernel on "
                                  f"{inputs} of the p*p input pairs")


RUN_PARAMETERS = ("null_draws", "init_seeds", "device", "out_dir", "cache_dir")
MLP_NOTEBOOK = (*MLPRecipe.names(), *RUN_PARAMETERS)


def _check_recipe(recipe_class: type[Recipe], v: Mapping[str, Any]) -> None:
    """The notebook's recipe (its fields among ``v``, an old name's value where given), then
    its device and cache folder."""
    values = {name: v[name] for name in recipe_class.names() if name in v}
    for old, new in recipe_class.RENAMED.items():
        values[new] = renamed(old, values.pop(old, None), new, values[new])
    recipe_class.of(**values).check()
    modular.check_run_arguments(v["device"], v["cache_dir"])


def check_mlp_notebook(values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
    """Validate the parameters of notebook 01 (the MLP): the fields of
    :class:`~entk_utils.settings.modular.MLPRecipe` (``steps``, the old name of ``epochs``,
    too), ``p*p`` at least :data:`MLP_KERNEL_CHECK_INPUTS`, ``null_draws >= 1``,
    ``init_seeds`` a non-empty list of integers >= 0, ``device``, ``out_dir`` / ``cache_dir``
    folders or None."""
    v = _gather(values, kwargs, MLP_NOTEBOOK, "01")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the notebook says it where it takes the value
        _check_recipe(MLPRecipe, v)
    _check_modulus_feasible(v["p"], MLP_KERNEL_CHECK_INPUTS, "01")
    _check_common(v)


def _check_common(v: Mapping[str, Any]) -> None:
    """``null_draws``, ``init_seeds`` and ``out_dir``, shared by notebooks 01 and 02."""
    checks.integer("null_draws", v["null_draws"], minimum=1)
    checks.integers("init_seeds", v["init_seeds"], minimum=0)
    checks.folder("out_dir", v["out_dir"])


TRANSFORMER_NOTEBOOK = (*TransformerRecipe.names(), "n_eigs", *RUN_PARAMETERS)


def check_transformer_notebook(values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
    """Validate the parameters of notebook 02 (the Transformer): the fields of
    :class:`~entk_utils.settings.modular.TransformerRecipe`, ``p*p`` at least
    :data:`TRANSFORMER_KERNEL_CHECK_INPUTS`, ``n_eigs`` in ``[3, p*p]``, and as for 01."""
    v = _gather(values, kwargs, TRANSFORMER_NOTEBOOK, "02")
    _check_recipe(TransformerRecipe, v)
    _check_modulus_feasible(v["p"], TRANSFORMER_KERNEL_CHECK_INPUTS, "02")
    checks.integer("n_eigs", v["n_eigs"], minimum=MIN_SPECTRUM, maximum=v["p"] ** 2)
    _check_common(v)


SAE_PARAMETERS = ("sae", "sae_documents", "sae_width", "sae_k", "sae_tokens", "sae_batch_size", "sae_held_out")
GEMMA_NOTEBOOK = ("seed", "n_per_tag", "context_len", "layers", "n_eigs", "lanczos_steps", "min_positives",
                  "min_per_half", "n_splits", "n_boot", "n_permutations", "causal_labels", "causal_contexts",
                  "relative_norms", *SAE_PARAMETERS, "candidate_min_count", "model_source", "text_path", "stories_path",
                  "device", "out_dir", "cache_dir")


def check_gemma_notebook(values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
    """Validate the parameters of notebook 03 (Gemma on TinyStories), cheapest first:
    counts and seeds; then the stories file (readable, UTF-8, at least one
    ``<|endoftext|>`` separator: :func:`~entk_utils.settings.language.read_stories`); then, from the
    model's config without loading its weights
    (:func:`~entk_utils.settings.language.model_outline`), ``layers`` a non-empty list of distinct
    layer indices of the model, ``context_len`` plus the generated tokens within its
    context, ``n_eigs`` within the hidden size."""
    v = _gather(values, kwargs, GEMMA_NOTEBOOK, "03")
    checks.integer("seed", v["seed"], minimum=0)
    n_per_tag = checks.integer("n_per_tag", v["n_per_tag"], minimum=2,
                               note=" (the contexts are split in halves stratified by part of speech)")
    context_len = checks.integer("context_len", v["context_len"], minimum=1)
    checks.integers("layers", v["layers"], minimum=0, unique=True)
    lanczos_steps = checks.integer("lanczos_steps", v["lanczos_steps"], minimum=1)
    n_contexts = n_per_tag * len(language.TAGS)
    n_eigs = checks.integer("n_eigs", v["n_eigs"], minimum=1, maximum=min(lanczos_steps, n_contexts),
                            note=f" (at most lanczos_steps and the {n_contexts} contexts: PCA uses as many components)")
    for name in ("min_positives", "causal_labels"):
        checks.integer(name, v[name], minimum=1)
    baselines.check_comparison_parameters(v, n_per_tag // 2, " (each half holds n_per_tag // 2 contexts of a part of speech)")
    if v["n_permutations"] is not None:
        warnings.warn("n_permutations is no longer used by notebook 03: its tests are rank tests and resampled splits "
                      "(n_splits)", FutureWarning, stacklevel=2)
    checks.integer("causal_contexts", v["causal_contexts"], minimum=1, allow_none=True)
    checks.reals("relative_norms", v["relative_norms"], minimum=0, low_open=True)
    baselines.check_finder_parameters(v, n_contexts)
    checks.torch_device("device", v["device"])
    checks.folder("out_dir", v["out_dir"])
    checks.folder("cache_dir", v["cache_dir"])
    source = v["model_source"]
    language.resolve_source(source)
    name = "stories_path" if v["text_path"] is None and v["stories_path"] is not None else "text_path"
    if v[name] is not None:  # stories_path: text_path's old name, which the notebook has taken as text_path already
        checks.folder(name, v[name])
    language.read_stories(language.stories_path(v[name]))
    shape = language.model_outline(source, v["cache_dir"])
    checks.integers("layers", v["layers"], minimum=0, maximum=shape["layers"] - 1, unique=True,
                    note=f" (the model has {shape['layers']} decoder layers)")
    checks.integer("context_len", context_len, maximum=shape["context"] - language.GENERATED_TOKENS,
                   note=f" (the model reads {shape['context']} tokens, {language.GENERATED_TOKENS} of them generated)")
    checks.integer("n_eigs", n_eigs, maximum=shape["hidden"], note=" (the model's hidden size)")


CAUSAL_NOTEBOOK = ("mlp_parameters", "transformer_parameters", "n_directions", "relative_norms", "seed", "device",
                   "out_dir", "cache_dir")


def _check_training_dict(notebook: str, name: str, value: Any) -> None:
    """A dict of changes to a training recipe: known names, then the recipe they make (the
    paper's recipe filling the rest)."""
    check_forwarded(notebook, name, value)
    recipe_class, _ = FORWARDED[notebook][name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            recipe_class.of(**value).check()
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def check_causal_notebook(values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
    """Validate the parameters of notebook 05 (the causal tests): ``mlp_parameters`` /
    ``transformer_parameters`` dicts of changes to the recipes
    :class:`~entk_utils.settings.modular.MLPRecipe` / :class:`~entk_utils.settings.modular.TransformerRecipe`
    (names and values; ``cache_dir`` and ``device`` come from the notebook), ``n_directions
    >= 1``, ``relative_norms`` a non-empty list of reals >= 0, ``seed``, ``device``,
    ``out_dir``, ``cache_dir``."""
    v = _gather(values, kwargs, CAUSAL_NOTEBOOK, "05")
    checks.integer("seed", v["seed"], minimum=0)
    checks.torch_device("device", v["device"])
    checks.folder("out_dir", v["out_dir"])
    checks.folder("cache_dir", v["cache_dir"])
    _check_training_dict("05_causal", "mlp_parameters", v["mlp_parameters"])
    _check_training_dict("05_causal", "transformer_parameters", v["transformer_parameters"])
    checks.integer("n_directions", v["n_directions"], minimum=1)
    checks.reals("relative_norms", v["relative_norms"], minimum=0)


SEEDS_NOTEBOOK = ("seeds", "mlp_parameters", "transformer_seeds", "split_policies", "transformer_parameters",
                  "grid_splits", "grid_init_seeds", "out_dir", "cache_dir", "runs_dir")


def _with_forwarded(notebook: Path, name: str, value: Mapping[str, Any], caller_values: Mapping[str, Any],
                    validator: Callable) -> None:
    """Check a dict that ``notebook`` passes on to another notebook: its names, then the
    values that notebook will run with (its declared defaults, ``value``, and what the
    caller sets itself), by that notebook's own ``validator``."""
    check_forwarded(notebook, name, value)
    target, _ = FORWARDED[notebook.stem][name]
    defaults = declared_parameters(notebook.with_name(target + notebook.suffix))
    try:
        validator({**defaults, **value, **caller_values})
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def check_seeds_notebook(values: Mapping[str, Any] | None = None, /, notebook: str | os.PathLike = "04_seeds.ipynb",
                         **kwargs: Any) -> None:
    """Validate the parameters of notebook 04 (the seed sweep) before any run starts:
    ``seeds`` / ``transformer_seeds`` non-empty lists of distinct integers >= 0,
    ``split_policies`` distinct entries of :data:`~entk_utils.settings.modular.SPLITS`,
    ``mlp_parameters`` / ``transformer_parameters`` dicts of notebook 01 / 02 parameters
    (names, and the values each run will get, checked by that notebook's validator),
    ``grid_splits`` distinct entries each ``"paper"`` or a split seed >= 0,
    ``grid_init_seeds`` distinct integers >= 0, and the folders.

    notebook : the path of notebook 04 (the notebooks it runs are read beside it).
    """
    v = _gather(values, kwargs, SEEDS_NOTEBOOK, "04")
    notebook = Path(notebook)
    seeds = checks.integers("seeds", v["seeds"], minimum=0, unique=True)
    transformer_seeds = checks.integers("transformer_seeds", v["transformer_seeds"], minimum=0, unique=True)
    policies = v["split_policies"]
    if not isinstance(policies, (list, tuple)) or not policies or len(set(policies)) != len(policies) \
            or not set(policies) <= set(modular.SPLITS):
        raise checks.fail("split_policies", policies, f"a non-empty list of distinct entries of {list(modular.SPLITS)}")
    for name in ("out_dir", "cache_dir", "runs_dir"):
        checks.folder(name, v[name])
    _with_forwarded(notebook, "mlp_parameters", v["mlp_parameters"],
                    {"seed": seeds[0], "split_seed": seeds[0], "out_dir": None, "cache_dir": v["cache_dir"]},
                    check_mlp_notebook)
    for policy in policies:
        _with_forwarded(notebook, "transformer_parameters", v["transformer_parameters"],
                        {"seed": transformer_seeds[0], "split": policy, "out_dir": None, "cache_dir": v["cache_dir"]},
                        check_transformer_notebook)
    grid_splits = v["grid_splits"]
    if not isinstance(grid_splits, (list, tuple)) or not grid_splits or len(set(map(str, grid_splits))) != len(grid_splits) \
            or not all(s == "paper" or (isinstance(s, int) and not isinstance(s, bool) and s >= 0) for s in grid_splits):
        raise checks.fail("grid_splits", grid_splits, "a non-empty list of distinct entries, each 'paper' or a split "
                                                      "seed >= 0")
    checks.integers("grid_init_seeds", v["grid_init_seeds"], minimum=0, unique=True)


YOUR_MODEL_NOTEBOOK = ("seed", "model_source", "weights", "text_path", "n_contexts", "context_len", "n_eigs",
                       "lanczos_steps", "min_positives", "min_per_half", "n_permutations", "top_contexts",
                       *SAE_PARAMETERS, "n_splits", "n_boot", "candidate_min_count", "device", "out_dir", "cache_dir")


def check_your_model_notebook(values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
    """Validate the parameters of notebook 06 (your own model), cheapest first: counts and
    seeds (``n_contexts`` at least twice ``min_positives``, so that a feature can have that
    many positives and negatives; ``n_eigs`` at most ``lanczos_steps`` and ``n_contexts``);
    ``weights`` None or parameter / module names; the text file (readable UTF-8 text:
    :func:`~entk_utils.settings.language.read_documents`); ``model_source`` one of
    :data:`~entk_utils.settings.language.MODEL_SOURCES`, an existing folder or ``.gguf`` file, or a
    Hub id; then, from the model's config without its weights
    (:func:`~entk_utils.settings.language.model_outline`), ``context_len`` within its context,
    ``n_eigs`` within its hidden size and every weight name one of its parameters or modules."""
    v = _gather(values, kwargs, YOUR_MODEL_NOTEBOOK, "06")
    checks.integer("seed", v["seed"], minimum=0)
    context_len = checks.integer("context_len", v["context_len"], minimum=1)
    lanczos_steps = checks.integer("lanczos_steps", v["lanczos_steps"], minimum=1)
    min_positives = checks.integer("min_positives", v["min_positives"], minimum=1)
    n_contexts = checks.integer("n_contexts", v["n_contexts"], minimum=2 * min_positives,
                                note=" (twice min_positives: a feature needs that many positives and negatives)")
    n_eigs = checks.integer("n_eigs", v["n_eigs"], minimum=1, maximum=min(lanczos_steps, n_contexts),
                            note=" (at most lanczos_steps and n_contexts: PCA uses as many components)")
    if v["n_permutations"] is not None:  # naming: Holm over the eNTK's and PCA's directions together
        check_reachable(checks.integer("n_permutations", v["n_permutations"], minimum=1), 2 * n_eigs)
    checks.integer("top_contexts", v["top_contexts"], minimum=1)
    baselines.check_comparison_parameters(v, n_contexts // 4, " (a quarter of n_contexts: positives and negatives in each half)")
    baselines.check_finder_parameters(v, n_contexts)
    checks.torch_device("device", v["device"])
    checks.folder("out_dir", v["out_dir"])
    checks.folder("cache_dir", v["cache_dir"])
    weights = v["weights"]
    if weights is not None and (isinstance(weights, str) or not isinstance(weights, (list, tuple)) or not weights
                                or not all(isinstance(w, str) and w for w in weights) or len(set(weights)) < len(weights)):
        raise checks.fail("weights", weights, "None or a non-empty list of distinct parameter or module names")
    text_path = v["text_path"]
    if text_path is not None and (not isinstance(text_path, (str, os.PathLike)) or not Path(text_path).is_file()):
        raise checks.fail("text_path", text_path, "None or an existing text file")
    language.read_documents(language.stories_path(text_path))
    source = v["model_source"]
    language.resolve_source(source)
    outline = language.model_outline(source, v["cache_dir"])
    checks.integer("context_len", context_len, maximum=outline["context"],
                   note=f" (the model reads {outline['context']} tokens)")
    checks.integer("n_eigs", n_eigs, maximum=outline["hidden"], note=" (the model's hidden size)")
    if weights is not None:
        operators.weight_names(weights, outline["parameters"], f"model {source}")

if __name__ == "__main__":
    sys.exit(main())


TOY_NOTEBOOK = ("seeds", "configurations", "probabilities", "steps", "batch_size", "n_inputs", "modular", "null_draws",
                "out_dir", "cache_dir")


def check_toy_notebook(values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
    """Validate the parameters of notebook 07 (toy models of superposition): the sweep
    (:func:`~entk_utils.experiments.toy.check_toy_parameters`), ``out_dir``, ``cache_dir``."""
    v = _gather(values, kwargs, TOY_NOTEBOOK, "07")
    toy.check_toy_parameters(v)
    checks.folder("out_dir", v["out_dir"])
    checks.folder("cache_dir", v["cache_dir"])
