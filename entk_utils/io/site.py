"""Feature dashboards as HTML: one card per direction, an index of every card, and a static
site of local files (inline CSS and SVG, no script, no network asset) that opens from disk.

Rendering only: a :class:`Card` holds plain numbers and strings; what they mean and how they
are computed is :mod:`entk_utils.experiments.dashboard`'s business.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_atomically

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; background: #fff; }
.card h3 { margin: 0 0 0.3em 0; }
.explanation { font-size: 1.05em; margin: 0.2em 0 0.6em 0; }
.explanation.none { color: #777; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 2px 6px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.context { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; }
.tok { border-radius: 2px; }
.next { font-weight: bold; border-bottom: 2px solid #444; }
.up { color: #a04000; } .down { color: #1f5fa0; }
.note { color: #666; font-size: 0.8em; }
"""
HIGH, LOW = (230, 120, 0), (40, 110, 220)  # token colours: reads high / reads low along the direction


@dataclass
class Context:
    """One shown context: ``label`` (``"top 1"``, ``"quantile 0.50"``), its ``score``, its
    ``tokens`` (strings) with one ``values`` each (the per-token reading), and what follows:
    ``next_word``, its ``tags``, the model's ``prediction``."""

    label: str
    score: float
    tokens: list[str]
    values: list[float]
    next_word: str
    tags: str
    prediction: str


@dataclass
class Card:
    """What one direction's card shows. ``key``: a file-name-safe id (``"entk-3"``);
    ``title``; ``explanation``, with ``explained`` (validated) and ``detail`` (its effect
    size and q-value in words); ``scores`` (N,) as oriented; ``contexts``; ``logits_up`` /
    ``logits_down``: (token, logit change) pairs; ``aurocs``: label -> AUROC; ``notes``: how
    the numbers were read, in words."""

    key: str
    method: str
    title: str
    explanation: str
    explained: bool
    detail: str
    scores: np.ndarray
    contexts: list[Context]
    logits_up: list[tuple[str, float]]
    logits_down: list[tuple[str, float]]
    aurocs: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _e(text) -> str:
    return html.escape(str(text))


def histogram_svg(values, marks: dict[str, float] | None = None, bins: int = 30, width: int = 360,
                  height: int = 90) -> str:
    """An inline SVG histogram of ``values`` with a labelled tick at each of ``marks``."""
    values = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(values, bins=bins)
    lo, hi = edges[0], edges[-1] if edges[-1] > edges[0] else edges[0] + 1
    x = lambda v: 4 + (width - 8) * (v - lo) / (hi - lo)  # noqa: E731
    plot_h = height - 18
    bars = "".join(
        f'<rect x="{x(a):.1f}" y="{plot_h - plot_h * c / counts.max():.1f}" width="{max(x(b) - x(a) - 1, 0.5):.1f}" '
        f'height="{plot_h * c / counts.max():.1f}" fill="#8a9bb0"/>' for a, b, c in zip(edges[:-1], edges[1:], counts))
    ticks = "".join(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="0" y2="{plot_h}" stroke="#c05000" stroke-width="1">'
                    f'<title>{_e(name)}: {v:.3g}</title></line>' for name, v in (marks or {}).items())
    axis = (f'<text x="4" y="{height - 3}" font-size="10">{lo:.3g}</text>'
            f'<text x="{width - 4}" y="{height - 3}" font-size="10" text-anchor="end">{hi:.3g}</text>')
    return (f'<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="histogram of {len(values)} scores">{bars}{ticks}{axis}</svg>')


def highlighted(context: Context, scale: float) -> str:
    """The context's tokens as spans shaded by their values (``scale``: the value of full
    colour; a NaN value, a token not read, is left unshaded), then the next word; each
    token's value in its tooltip."""
    spans = []
    for token, value in zip(context.tokens, context.values):
        if not np.isfinite(value):
            spans.append(f'<span class="tok" title="not read">{_e(token)}</span>')
            continue
        alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
        r, g, b = HIGH if value >= 0 else LOW
        spans.append(f'<span class="tok" style="background: rgba({r},{g},{b},{alpha:.2f})" '
                     f'title="{value:.3g}">{_e(token)}</span>')
    return "".join(spans) + f' <span class="next" title="next word">{_e(context.next_word)}</span>'


def card_html(card: Card, link: str | None = None) -> str:
    """One card as an HTML fragment (``<div class="card">``); ``link``: where its title points."""
    scale = max((abs(v) for c in card.contexts for v in c.values if np.isfinite(v)), default=0.0)
    title = f'<a href="{_e(link)}">{_e(card.title)}</a>' if link else _e(card.title)
    explanation = (f'<p class="explanation"><b>{_e(card.explanation)}</b> · {_e(card.detail)}</p>' if card.explained
                   else f'<p class="explanation none">none found · best candidate {_e(card.detail)}</p>')
    rows = "".join(f'<tr><td>{_e(c.label)}</td><td class="num">{c.score:.3g}</td>'
                   f'<td class="context">{highlighted(c, scale)}</td><td>{_e(c.tags)}</td><td>{_e(c.prediction)}</td></tr>'
                   for c in card.contexts)
    contexts = ('<table class="contexts"><tr><th></th><th>score</th><th>context (shaded by each token\'s reading) '
                'and the next word</th><th>its tags</th><th>model predicts</th></tr>' + rows + '</table>')
    logits = "".join(f'<tr><td class="up">{_e(a)}</td><td class="num">{u:+.3g}</td><td class="down">{_e(b)}</td>'
                     f'<td class="num">{d:+.3g}</td></tr>' for (a, u), (b, d) in zip(card.logits_up, card.logits_down))
    logits = f'<table class="logits"><tr><th colspan="2">raises</th><th colspan="2">lowers</th></tr>{logits}</table>'
    aurocs = "".join(f'<tr><td>{_e(k)}</td><td class="num">{v:.2f}</td></tr>'
                     for k, v in sorted(card.aurocs.items(), key=lambda kv: -abs(kv[1] - 0.5)))
    aurocs = f'<table class="aurocs"><tr><th>label</th><th>AUROC</th></tr>{aurocs}</table>'
    marks = {c.label: c.score for c in card.contexts}
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in card.notes)
    histogram = (f'{histogram_svg(card.scores, marks)}<p class="note">scores of all {len(card.scores)} contexts; '
                 'ticks: the contexts shown below</p>')
    return (f'<div class="card" id="{_e(card.key)}"><h3>{title}</h3>{explanation}'
            f'<div class="row"><div>{histogram}</div><div>{logits}<p class="note">next-token logits it moves most (change less its mean over the vocabulary)</p></div>'
            f'<div>{aurocs}</div></div>{contexts}{notes}</div>')


def page(title: str, body: str) -> str:
    """A whole HTML document with the dashboard's style inline."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<style>{STYLE}</style></head><body>{body}</body></html>')


def inline(cards: list[Card]) -> str:
    """Cards as one HTML fragment with the style, for a notebook's output."""
    return f"<style>{STYLE}</style>" + "".join(card_html(c) for c in cards)


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.2f}", escape=True, border=0)


def write_site(cards: list[Card], folder: str | os.PathLike, *, title: str, intro: str = "",
               discovery: pd.DataFrame | None = None) -> Path:
    """Write ``folder/index.html`` (the discovery table, then every card's explanation,
    linked) and ``folder/<card.key>.html`` per card; each file written atomically. Returns
    the index's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = [c.key for c in cards]
    bad = [k for k in keys if not re.fullmatch(r"[A-Za-z0-9_.-]+", k) or k == "index"]
    if bad or len(set(keys)) != len(keys):
        raise ValueError(f"card keys must be unique file-name-safe ids other than 'index', got {bad or keys}")
    rows = "".join(f'<tr><td>{_e(c.method)}</td><td><a href="{_e(c.key)}.html">{_e(c.title)}</a></td>'
                   f'<td>{_e(c.explanation if c.explained else "none found")}</td><td>{_e(c.detail)}</td></tr>'
                   for c in cards)
    body = (f"<h1>{_e(title)}</h1><p>{_e(intro)}</p>"
            + ("" if discovery is None else f"<h2>Discovery</h2>{_table_html(discovery)}")
            + '<h2>Every direction</h2><table class="index"><tr><th>method</th><th>direction</th>'
            f"<th>explanation</th><th>effect</th></tr>{rows}</table>")
    for card in cards:
        text = page(card.title, f'<p><a href="index.html">all directions</a></p>{card_html(card)}')
        write_atomically(folder / f"{card.key}.html", lambda f, text=text: f.write(text.encode()))
    index = folder / "index.html"
    write_atomically(index, lambda f: f.write(page(title, body).encode()))
    return index
