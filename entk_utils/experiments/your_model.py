"""Notebook 06's tables and figures: the eNTK directions of any causal LM, any weights and
any text, read off their strongest contexts and named by features of the next word.

What the notebook calls below these lives in its layers: the model
(:func:`~entk_utils.settings.language.load_model`, :func:`~entk_utils.settings.language.model_outline`),
the weights (:func:`~entk_utils.kernels.conventions.default_weights`), the text and its contexts
(:func:`~entk_utils.settings.language.read_documents`, :func:`~entk_utils.settings.language.cached_contexts`),
the features (:func:`~entk_utils.settings.language.grammar_labels`) and the naming
(:mod:`entk_utils.features.naming`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..settings.language import ContextDataset, context_tail


# --------------------------------------------------------------------------- the reading
def strongest_contexts(scores, data: ContextDataset, tokenizer, directions: pd.DataFrame, *,
                       top: int = 5, n_tokens: int = 12) -> pd.DataFrame:
    """For each direction of ``directions`` (a :func:`~entk_utils.features.naming.name_directions`
    table), its ``top`` contexts by score, oriented so that a named direction's feature sits
    at the high end (an unnamed one's largest score): ``direction, name, rank, score,
    context`` (:func:`~entk_utils.settings.language.context_tail`), ``next word`` (the
    text's), ``its tag``, ``model predicts``."""
    S = np.asarray(scores, dtype=np.float64)
    rows = []
    for d in directions.itertuples():
        column = S[:, d.direction]
        oriented = column * (d.sign if d.named else np.sign(column[np.argmax(np.abs(column))]) or 1)
        for rank, n in enumerate(np.argsort(-oriented, kind="stable")[:top]):
            rows.append({"direction": d.direction, "name": d.name, "rank": rank + 1, "score": oriented[n],
                         "context": context_tail(tokenizer, data.input_ids[n].tolist(), n_tokens),
                         "next word": data.words[n], "its tag": data.upos[n], "model predicts": data.generated[n]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- notebook 06's tables and figures
def spectrum_figure(evals):
    """The top eigenvalues (descending) on a log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    ax.semilogy(np.arange(len(evals)), evals, "o-", ms=4)
    ax.set(xlabel="eigenvalue index", ylabel="eigenvalue", title="Top eNTK eigenvalues of the chosen weights")
    return fig


def directions_table(named: dict[str, pd.DataFrame], evals, pca_scores, shares) -> pd.DataFrame:
    """One row per direction of each method (``named``: a
    :func:`~entk_utils.features.naming.name_directions` table per method,
    ``"entk"`` then ``"pca"``), with its eigenvalue (eNTK) or variance (PCA) and, for the eNTK,
    the share of the eigenvector that its top singular component explains."""
    table = pd.concat([t.assign(method=method) for method, t in named.items()], ignore_index=True)
    table["eigenvalue or variance"] = np.concatenate([np.asarray(evals), np.asarray(pca_scores).var(axis=0)])
    table["top singular share"] = np.concatenate([np.asarray(shares), np.full(np.shape(pca_scores)[1], np.nan)])
    return table


def features_figure(aurocs: dict[str, pd.DataFrame], named: dict[str, pd.DataFrame]):
    """Per method, the oriented AUROC of every direction (columns) for every feature (rows);
    a red box marks a direction's name where the permutation test allows one."""
    import matplotlib.pyplot as plt

    features = next(iter(aurocs.values())).index
    fig, axes = plt.subplots(1, len(aurocs), figsize=(6 * len(aurocs), 0.35 * len(features) + 1.6),
                             layout="constrained", sharey=True, squeeze=False)
    for ax, (method, auroc) in zip(axes[0], aurocs.items()):
        image = ax.imshow(auroc, vmin=0.5, vmax=1, cmap="viridis", aspect="auto")
        for d in named[method][named[method].named].itertuples():
            ax.add_patch(plt.Rectangle((d.direction - 0.5, features.get_loc(d.feature) - 0.5), 1, 1, fill=False,
                                       ec="red", lw=1.5))
        ax.set(title=f"{method}: AUROC per feature", xlabel="direction", xticks=range(auroc.shape[1]))
        ax.grid(False)
    axes[0, 0].set_yticks(range(len(features)), features, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="AUROC (oriented)")
    return fig


def summary_table(named: dict[str, pd.DataFrame], aurocs: dict[str, pd.DataFrame], **columns) -> pd.DataFrame:
    """Per method: directions named, distinct features named, and the mean over features of
    the best AUROC over the method's directions; ``columns`` are added as they are."""
    best = {method: auroc.max(axis=1).mean() for method, auroc in aurocs.items()}
    summary = pd.DataFrame({method: {"directions named": int(t.named.sum()),
                                     "distinct features named": t[t.named].feature.nunique(),
                                     "mean best AUROC over features": best[method]}
                            for method, t in named.items()}).T
    return summary.assign(**columns)
