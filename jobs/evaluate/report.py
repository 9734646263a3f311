"""Evaluation report: Markdown tables, PNG plots and a self-contained HTML page.

The input is the summary table of ``bootstrap.summarize`` (a small pandas frame already
on the driver, so no Spark is needed here), columns ``bootstrap.SUMMARY_COLUMNS``: one
row per (``cut``, ``method``, ``k``, ``metric``) with the ``value`` and its 95 % interval
``lo``/``hi``, and ``diff`` = reference minus method with its paired interval
``diff_lo``/``diff_hi`` and ``verdict``. ``cut`` is an ISO date or ``"mean"`` (the
average over the cuts). Any metric may be missing for a method or a cut and any value
may be NaN (shown as ``-``, skipped in the plots).

The words better / worse / higher / lower are only ever taken from the ``verdict``
column: the report never judges a difference by its point value.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: a bare
``Figure`` renders PNGs with the Agg renderer, needs no display, does not switch the
process-wide backend, and is never registered with pyplot's figure manager, so nothing
has to be closed and nothing leaks between calls.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from jobs.evaluate import metrics

log = logging.getLogger(__name__)

REFERENCE = "pipeline"
MEAN = "mean"  # the ``cut`` of the rows averaged over the cuts (bootstrap.MEAN)
MISSING = "-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Metric(NamedTuple):
    """How the report shows a metric: ``header`` (``{k}`` is filled with K), ``kind``
    (a ``format_value`` kind) and a one-sentence ``definition``."""

    header: str
    kind: str
    definition: str


METRICS: dict[str, Metric] = {
    # main
    "recall": Metric(
        "recall@{k}",
        "rate",
        "Share of each user's purchases after the cut that appear in their top-{k} list, "
        "averaged over users.",
    ),
    "hit": Metric(
        "hit@{k}",
        "rate",
        "Share of users whose top-{k} list contains at least one item they bought after the cut.",
    ),
    "ndcg": Metric(
        "ndcg@{k}",
        "rate",
        "Like recall, but a hit near the top of the list counts more than one near the bottom "
        "(1.0 = all purchases ranked first).",
    ),
    "new_item_hit": Metric(
        "new-item hit@{k}",
        "rate",
        "Among the users who bought an item new to them after the cut, the share whose list "
        "hit such an item.",
    ),
    "new_category_hit": Metric(
        "new-cat hit@{k}",
        "rate",
        "Among the users who bought in a category new to them after the cut, the share whose "
        "list hit such an item: the main discovery measure.",
    ),
    "has_list": Metric(
        "users w/ list", "rate", "Share of the evaluated users who received a non-empty list."
    ),
    "list_length": Metric(
        "list length",
        "dec2",
        "Number of distinct items in a list (at most {k}), averaged over users (0 without a list).",
    ),
    "coverage": Metric(
        "coverage",
        "rate",
        "Share of the catalog that appears in at least one user's top-{k} list (no interval).",
    ),
    # repeat / explore
    "recall_repeat": Metric(
        "recall repeat",
        "rate",
        "Recall restricted to the purchased items the user had touched before the cut, "
        "over the users with such a purchase.",
    ),
    "recall_new_item": Metric(
        "recall new-item",
        "rate",
        "Recall restricted to the purchased items the user had never touched before the cut, "
        "over the users with such a purchase.",
    ),
    "recall_new_category": Metric(
        "recall new-cat",
        "rate",
        "Recall restricted to the purchased items in a category new to the user, "
        "over the users with such a purchase.",
    ),
    "repeat_share": Metric(
        "repeat share",
        "rate",
        "Share of a list's items that the user had touched before the cut (users with a list).",
    ),
    "discovery_slots": Metric(
        "discovery slots",
        "dec2",
        "Number of a list's items in a category new to the user (0 without a list).",
    ),
    "discovery_precision": Metric(
        "new-cat hits/slot",
        "rate",
        "New-category hits per discovery slot, over the users with at least one discovery slot.",
    ),
    # descriptive
    "category_width": Metric(
        "cat width", "dec2", "Number of distinct categories in a list, over the users with a list."
    ),
    "intra_list_diversity": Metric(
        "diversity",
        "rate",
        "Mean pairwise cosine distance between the embeddings of a list's items (0 = all alike).",
    ),
    "novelty": Metric(
        "novelty",
        "dec2",
        "Mean -log2(popularity) of the recommended items, in bits: higher means less popular items.",
    ),
    "reason_share": Metric("reason share", "rate", "Share of a list's items that come with a stated reason."),
    # operational point values of the language-model variants
    "parse_success": Metric(
        "parse ok", "rate", "Share of the model's replies that parsed (whole or partial)."
    ),
    "partial_share": Metric(
        "partial", "rate", "Share of the model's replies cut off, their complete items kept."
    ),
    "tokens_per_user": Metric("tokens/user", "dec1", "Tokens spent per user."),
    "latency_p50_ms": Metric("p50 ms", "int", "Median latency of a call, in milliseconds."),
    "latency_p95_ms": Metric("p95 ms", "int", "95th-percentile latency of a call, in milliseconds."),
    "failures": Metric("failures", "int", "Number of failed calls."),
}

MAIN_METRICS = (
    "recall",
    "hit",
    "ndcg",
    "new_item_hit",
    "new_category_hit",
    "has_list",
    "list_length",
    "coverage",
)
REPEAT_EXPLORE_METRICS = (
    "recall_repeat",
    "recall_new_item",
    "recall_new_category",
    "repeat_share",
    "discovery_slots",
    "discovery_precision",
)
DESCRIPTIVE_METRICS = ("category_width", "intra_list_diversity", "novelty", "reason_share")
# Metrics with a direction of quality (verdicts better / worse), operational figures.
QUALITY_METRICS = metrics.QUALITY_METRICS
OPS_METRICS = metrics.OPS_METRICS
# Drawn in the per-cut plots and in the repeat/explore plot, and swept over K.
PLOT_METRICS = ("recall", "hit", "ndcg", "new_item_hit", "new_category_hit")
REPEAT_EXPLORE_PLOT_METRICS = ("recall_repeat", "recall_new_item", "recall_new_category")
SWEEP_METRICS = ("recall", "new_category_hit")

LEGEND = (
    "Cells: value [95 % bootstrap interval over users]. Differences: reference minus "
    "baseline [95 % paired bootstrap interval]; 'better' / 'worse' (or 'higher' / 'lower') "
    "only when the whole interval lies above / below 0, otherwise 'not distinguishable'."
)


def header(metric: str, k: int | str) -> str:
    """Short column header of a metric, e.g. ``recall@20``; the name for an unknown metric."""
    spec = METRICS.get(metric)
    return spec.header.format(k=k) if spec else metric


def metric_definitions(k: int = 20) -> list[tuple[str, str]]:
    """(header, one-sentence definition) of every metric the report shows, in display order."""
    names = MAIN_METRICS + REPEAT_EXPLORE_METRICS + DESCRIPTIVE_METRICS + OPS_METRICS
    return [(header(name, k), METRICS[name].definition.format(k=k)) for name in names]


# --------------------------------------------------------------------------- cells


def format_value(value: Any, kind: str, signed: bool = False) -> str:
    """Format one number: ``kind`` is "rate" (4 decimals), "dec2", "dec1" or "int".

    NaN or None gives ``-``; ``signed`` writes a ``+`` before positive numbers (differences).
    """
    if value is None:
        return MISSING
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return MISSING
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    sign = "+" if signed else ""
    if kind == "rate":
        return f"{number:{sign}.4f}"
    if kind == "dec2":
        return f"{number:{sign}.2f}"
    if kind == "dec1":
        return f"{number:{sign}.1f}"
    if kind == "int":
        return f"{int(round(number)):{sign}d}"
    raise ValueError(f"unknown format kind {kind!r}")


def _is_number(value: Any) -> bool:
    """True for a finite or infinite number, False for None, NaN and non-numbers."""
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _with_interval(value: Any, lo: Any, hi: Any, kind: str, signed: bool = False) -> str:
    """``0.1234 [0.1100, 0.1350]``; just the value without an interval; ``-`` without a value."""
    if not _is_number(value):
        return MISSING
    text = format_value(value, kind, signed)
    if _is_number(lo) and _is_number(hi):
        text += f" [{format_value(lo, kind, signed)}, {format_value(hi, kind, signed)}]"
    return text


def _kind(metric: str) -> str:
    spec = METRICS.get(metric)
    return spec.kind if spec else "rate"


# --------------------------------------------------------------------------- selection


def _cuts(summary: pd.DataFrame) -> list[str]:
    """The dated cuts in date order (ISO dates sort as strings), without ``mean``."""
    return sorted({str(c) for c in summary["cut"]} - {MEAN})


def _rows(summary: pd.DataFrame, cut: str, k: int) -> pd.DataFrame:
    """The summary rows of one cut at one K."""
    return summary[(summary["cut"].astype(str) == str(cut)) & (summary["k"] == k)]


def _methods(rows: pd.DataFrame, reference: str) -> list[str]:
    """Methods of ``rows``: the reference first, then the others in order of appearance."""
    methods = [str(m) for m in rows["method"].drop_duplicates()]
    if reference in methods:
        methods.remove(reference)
        methods.insert(0, reference)
    return methods


def _lookup(rows: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """(method, metric) -> its summary row (the first one if repeated)."""
    out: dict[tuple[str, str], pd.Series] = {}
    for _, row in rows.iterrows():
        out.setdefault((str(row["method"]), str(row["metric"])), row)
    return out


def _table_cells(
    summary: pd.DataFrame, cut: str, k: int, metrics: Iterable[str], reference: str
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the value table: one row per method having one of ``metrics``."""
    rows = _rows(summary, cut, k)
    rows = rows[rows["metric"].isin(list(metrics))]
    present = [m for m in dict.fromkeys(metrics) if m in set(rows["metric"])]
    cells = _lookup(rows)
    body = []
    for method in _methods(rows, reference):
        line = [method]
        for metric in present:
            row = cells.get((method, metric))
            kind = _kind(metric)
            line.append(MISSING if row is None else _with_interval(row["value"], row["lo"], row["hi"], kind))
        body.append(line)
    return ["method"] + [header(m, k) for m in present], body


def _comparison_cells(
    summary: pd.DataFrame, cut: str, k: int, metrics: Iterable[str], reference: str
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the comparison: one row per baseline, one column per quality metric."""
    quality = [m for m in dict.fromkeys(metrics) if m in QUALITY_METRICS]
    rows = _rows(summary, cut, k)
    rows = rows[rows["metric"].isin(quality)]
    present = [m for m in quality if m in set(rows["metric"])]
    cells = _lookup(rows)
    body = []
    for method in _methods(rows, reference):
        if method == reference:
            continue
        line = [method]
        for metric in present:
            row = cells.get((method, metric))
            if row is None or not _is_number(row["diff"]):
                line.append(MISSING)
                continue
            text = _with_interval(row["diff"], row["diff_lo"], row["diff_hi"], _kind(metric), signed=True)
            if isinstance(row["verdict"], str) and row["verdict"]:
                text += f" {row['verdict']}"
            line.append(text)
        body.append(line)
    return ["baseline"] + [header(m, k) for m in present], body


def _sweep_cells(
    summary: pd.DataFrame, metric: str, cut: str, reference: str
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of a K sweep: one row per method, one column per K present."""
    rows = summary[(summary["cut"].astype(str) == str(cut)) & (summary["metric"] == metric)]
    ks = sorted({int(k) for k in rows["k"]})
    cells: dict[tuple[str, int], pd.Series] = {}
    for _, row in rows.iterrows():
        cells.setdefault((str(row["method"]), int(row["k"])), row)
    body = []
    for method in _methods(rows, reference):
        line = [method]
        for k in ks:
            row = cells.get((method, k))
            line.append(
                MISSING if row is None else _with_interval(row["value"], row["lo"], row["hi"], _kind(metric))
            )
        body.append(line)
    return ["method"] + [header(metric, k) for k in ks], body


# --------------------------------------------------------------------------- Markdown


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: first column left-aligned, the others right-aligned, ``|`` escaped.

    Cells are padded so the text also lines up on a console.
    """
    if len(headers) < 2 or not rows:
        return "(no data)"
    headers = [h.replace("|", "\\|") for h in headers]
    rows = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    separator = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]
    return "\n".join([line(headers), "| " + " | ".join(separator) + " |", *(line(r) for r in rows)])


def format_table(
    summary: pd.DataFrame, cut: str, k: int, metrics: Sequence[str], reference: str = REFERENCE
) -> str:
    """Markdown table of one cut at one K: one row per method (``reference`` first, then the
    others in order of appearance), one column per metric of ``metrics`` present, cells
    ``value [lo, hi]`` (just the value without an interval, ``-`` when missing or NaN)."""
    return _markdown(*_table_cells(summary, cut, k, metrics, reference))


def format_comparison(
    summary: pd.DataFrame, cut: str, k: int, metrics: Sequence[str], reference: str = REFERENCE
) -> str:
    """Markdown table of ``reference`` minus each baseline: one row per baseline, one column
    per quality metric of ``metrics`` present, cells ``diff [diff_lo, diff_hi] verdict`` with
    the verdict word exactly as in the summary."""
    return _markdown(*_comparison_cells(summary, cut, k, metrics, reference))


def format_k_sweep(summary: pd.DataFrame, metric: str, cut: str = MEAN, reference: str = REFERENCE) -> str:
    """Markdown table of ``metric`` at every K present: one row per method, one column per K."""
    return _markdown(*_sweep_cells(summary, metric, cut, reference))


def _section_title(cut: str, n_cuts: int) -> str:
    if cut == MEAN:
        return f"mean over {n_cuts} cut{'s' if n_cuts != 1 else ''}"
    return f"cut {cut}"


def _has_metrics(summary: pd.DataFrame, cut: str, k: int, metrics: Iterable[str]) -> bool:
    rows = _rows(summary, cut, k)
    return bool(rows["metric"].isin(list(metrics)).any())


def format_report(summary: pd.DataFrame, k: int, reference: str = REFERENCE) -> str:
    """The text the evaluation job prints: per cut (date order) and then the mean, the main,
    repeat/explore and comparison tables at K = ``k``; a K sweep of the mean at the end."""
    if summary.empty:
        return f"evaluation at K={k}: no results"
    cuts = _cuts(summary)
    sections = cuts + ([MEAN] if (summary["cut"].astype(str) == MEAN).any() else [])
    parts = [f"## Evaluation at K={k} (reference: {reference})", "", LEGEND]
    for cut in sections:
        parts += ["", f"### {_section_title(cut, len(cuts))}", ""]
        parts += ["main metrics:", format_table(summary, cut, k, MAIN_METRICS, reference), ""]
        parts += ["repeat / explore:", format_table(summary, cut, k, REPEAT_EXPLORE_METRICS, reference), ""]
        if cut == MEAN and _has_metrics(summary, cut, k, DESCRIPTIVE_METRICS):
            parts += ["list profile:", format_table(summary, cut, k, DESCRIPTIVE_METRICS, reference), ""]
        if _has_metrics(summary, cut, k, OPS_METRICS):
            parts += ["operations:", format_table(summary, cut, k, OPS_METRICS, reference), ""]
        parts += [
            f"{reference} minus baseline, main:",
            format_comparison(summary, cut, k, MAIN_METRICS, reference),
            "",
            f"{reference} minus baseline, repeat / explore:",
            format_comparison(summary, cut, k, REPEAT_EXPLORE_METRICS, reference),
        ]
    sweep_cut = MEAN if MEAN in sections else (cuts[-1] if cuts else MEAN)
    parts += ["", f"### K sweep ({_section_title(sweep_cut, len(cuts))})"]
    for metric in SWEEP_METRICS:
        parts += ["", f"{header(metric, 'K')}:", format_k_sweep(summary, metric, sweep_cut, reference)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- plots


def _no_data(ax, message: str) -> None:
    """Write a centred note on an empty axis."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _float(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def _error(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Error-bar lengths (2 x n) from an interval; 0 where the interval is NaN."""
    below = np.where(np.isnan(lo), 0.0, values - lo)
    above = np.where(np.isnan(hi), 0.0, hi - values)
    return np.clip(np.vstack([below, above]), 0.0, None)


def _bars(ax, summary: pd.DataFrame, cut: str, k: int, metrics: Sequence[str], reference: str) -> bool:
    """Grouped bars: one group per method, one bar per metric, error bars from lo/hi.

    NaN values are skipped; returns False (drawing nothing) when no metric has a value.
    """
    rows = _rows(summary, cut, k)
    rows = rows[rows["metric"].isin(list(metrics))]
    methods = _methods(rows, reference)
    cells = _lookup(rows)
    series = []
    for metric in metrics:
        triples = [cells.get((method, metric)) for method in methods]
        values = np.array([math.nan if r is None else _float(r["value"]) for r in triples])
        lo = np.array([math.nan if r is None else _float(r["lo"]) for r in triples])
        hi = np.array([math.nan if r is None else _float(r["hi"]) for r in triples])
        if not np.all(np.isnan(values)):
            series.append((metric, values, lo, hi))
    if not series:
        return False
    x = np.arange(len(methods))
    width = 0.8 / len(series)
    for i, (metric, values, lo, hi) in enumerate(series):
        keep = ~np.isnan(values)
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(
            x[keep] + offset,
            values[keep],
            width,
            yerr=_error(values[keep], lo[keep], hi[keep]),
            capsize=2,
            label=header(metric, k),
        )
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_xlabel("method")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return True


def _plot_bars(
    summary: pd.DataFrame,
    cut: str,
    k: int,
    metrics: Sequence[str],
    reference: str,
    path: Path,
    *,
    title: str,
    ylabel: str,
    no_data: str,
) -> None:
    """One figure of ``_bars`` (or the ``no_data`` message) with its title, saved to ``path``."""
    fig = Figure(figsize=(12, 5.5))
    ax = fig.subplots()
    if _bars(ax, summary, cut, k, metrics, reference):
        ax.set_ylabel(ylabel)
    else:
        _no_data(ax, no_data)
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _plot_cut(summary: pd.DataFrame, cut: str, n_cuts: int, k: int, reference: str, path: Path) -> None:
    _plot_bars(summary, cut, k, PLOT_METRICS, reference, path,
               title=f"Main metrics at K={k}, {_section_title(cut, n_cuts)}",
               ylabel="per-user mean (bars: 95 % interval)", no_data=f"no values at K={k}")  # fmt: skip


def _plot_repeat_explore(summary: pd.DataFrame, k: int, reference: str, path: Path) -> None:
    _plot_bars(summary, MEAN, k, REPEAT_EXPLORE_PLOT_METRICS, reference, path,
               title=f"Recall of repeat, new-item and new-category purchases at K={k}, mean over cuts",
               ylabel="recall (bars: 95 % interval)", no_data=f"no repeat / explore recall at K={k}")  # fmt: skip


def _plot_k_sweep(summary: pd.DataFrame, reference: str, path: Path) -> None:
    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, len(SWEEP_METRICS))
    mean_rows = summary[summary["cut"].astype(str) == MEAN]
    for ax, metric in zip(axes, SWEEP_METRICS, strict=True):
        rows = mean_rows[mean_rows["metric"] == metric]
        drawn = False
        for method in _methods(rows, reference):
            mine = rows[rows["method"].astype(str) == method].sort_values("k")
            ks = mine["k"].to_numpy(dtype=float)
            values = np.array([_float(v) for v in mine["value"]])
            lo = np.array([_float(v) for v in mine["lo"]])
            hi = np.array([_float(v) for v in mine["hi"]])
            keep = ~np.isnan(values)
            if not keep.any():
                continue
            (line,) = ax.plot(ks[keep], values[keep], marker="o", label=method)
            band = keep & ~np.isnan(lo) & ~np.isnan(hi)
            if band.any():
                ax.fill_between(ks[band], lo[band], hi[band], color=line.get_color(), alpha=0.15)
            drawn = True
        if drawn:
            ks_present = sorted({int(k) for k in rows["k"]})
            ax.set_xscale("log")
            ax.set_xticks(ks_present)
            ax.set_xticklabels([str(k) for k in ks_present])
            ax.minorticks_off()
            ax.set_xlabel("K")
            ax.set_ylabel(header(metric, "K"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        else:
            _no_data(ax, f"no {header(metric, 'K')} values")
        ax.set_title(f"{header(metric, 'K')}, mean over cuts (band: 95 % interval)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _cut_stem(cut: str) -> str:
    """File stem of a cut's plot: ``cut_20110917`` for 2011-09-17, ``cut_mean``."""
    return "cut_" + re.sub(r"[^0-9A-Za-z]", "", str(cut))


def write_plots(
    summary: pd.DataFrame, out_dir: str | Path, k: int = 20, reference: str = REFERENCE
) -> dict[str, Path]:
    """Write the report PNGs into ``out_dir`` (created if needed); returns ``{stem: path}``.

    ``cut_<YYYYMMDD>.png`` per cut and ``cut_mean.png``: the main quality metrics at K =
    ``k`` per method with their intervals; ``k_sweep.png``: recall and new-category hit
    against K (mean over cuts); ``repeat_explore.png``: the recall of repeat, new-item and
    new-category purchases at K = ``k`` (mean over cuts). A panel with nothing to show says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuts = _cuts(summary)
    paths: dict[str, Path] = {}
    for cut in [*cuts, MEAN]:
        stem = _cut_stem(cut)
        paths[stem] = out / f"{stem}.png"
        _plot_cut(summary, cut, len(cuts), k, reference, paths[stem])
    paths["k_sweep"] = out / "k_sweep.png"
    _plot_k_sweep(summary, reference, paths["k_sweep"])
    paths["repeat_explore"] = out / "repeat_explore.png"
    _plot_repeat_explore(summary, k, reference, paths["repeat_explore"])
    log.info("report: wrote %d plots to %s", len(paths), out)
    return paths


def plot_caption(name: str, k: int = 20) -> str:
    """Caption of a plot of ``write_plots`` from its name (its file stem)."""
    if name == "cut_mean":
        return f"Main metrics at K={k} per method, mean over cuts; bars: 95 % interval."
    dated = re.fullmatch(r"cut_(\d{4})(\d{2})(\d{2})", name)
    if dated:
        return f"Main metrics at K={k} per method, cut {'-'.join(dated.groups())}; bars: 95 % interval."
    if name == "k_sweep":
        return "Recall and new-category hit against K, mean over cuts; bands: 95 % interval."
    if name == "repeat_explore":
        return (
            f"Recall of repeat, new-item and new-category purchases at K={k}, mean over cuts; "
            "bars: 95 % interval."
        )
    if name == "tradeoff":
        return (
            f"Recall@{k} against new-category hit@{k} as the repeat slots R go 0..{k}: the pipeline "
            "against the buyer's own items + co-occurrence in the same slots, mean over cuts."
        )
    return name


# --------------------------------------------------------------------------- HTML


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table as HTML (first column text, the others numbers); all text escaped."""
    if len(headers) < 2 or not rows:
        return "<p>(no data)</p>"

    def cls(i: int) -> str:
        return "txt" if i == 0 else "num"

    head = "".join(f'<th class="{cls(i)}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = [
        "<tr>" + "".join(f'<td class="{cls(i)}">{html.escape(c)}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows
    ]
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _html_section(summary: pd.DataFrame, cut: str, k: int, reference: str, full: bool) -> list[str]:
    """The tables of one cut (``full``: with the list profile) as HTML parts."""
    ref = html.escape(reference)
    parts = ["<h4>Main metrics</h4>", _html_table(*_table_cells(summary, cut, k, MAIN_METRICS, reference))]
    parts += [
        "<h4>Repeat / explore</h4>",
        _html_table(*_table_cells(summary, cut, k, REPEAT_EXPLORE_METRICS, reference)),
    ]
    if full and _has_metrics(summary, cut, k, DESCRIPTIVE_METRICS):
        parts += [
            "<h4>List profile</h4>",
            _html_table(*_table_cells(summary, cut, k, DESCRIPTIVE_METRICS, reference)),
        ]
    if _has_metrics(summary, cut, k, OPS_METRICS):
        parts += ["<h4>Operations</h4>", _html_table(*_table_cells(summary, cut, k, OPS_METRICS, reference))]
    parts += [
        f"<h4>{ref} minus baseline, main</h4>",
        _html_table(*_comparison_cells(summary, cut, k, MAIN_METRICS, reference)),
        f"<h4>{ref} minus baseline, repeat / explore</h4>",
        _html_table(*_comparison_cells(summary, cut, k, REPEAT_EXPLORE_METRICS, reference)),
    ]
    return parts


def _tuning_cell(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float | np.floating):
        return format_value(value, "rate")
    return MISSING if value is None else str(value)


def _html_tuning(tuning: pd.DataFrame) -> str:
    """The grid search of the baselines: every column, the chosen rows in bold."""
    headers = [str(c) for c in tuning.columns]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for _, row in tuning.iterrows():
        chosen = _is_number(row.get("chosen")) and bool(row.get("chosen"))
        cells = "".join(f"<td>{html.escape(_tuning_cell(row[c]))}</td>" for c in tuning.columns)
        body.append(f'<tr class="chosen">{cells}</tr>' if chosen else f"<tr>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f2f2f2; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.txt { text-align: left; }
tr.chosen { font-weight: bold; }
dl.context { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.context dt { font-weight: bold; }
dl.context dd { margin: 0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
"""


def write_html(
    summary: pd.DataFrame,
    plots: Mapping[str, str | Path],
    path: str | Path,
    title: str,
    context: Mapping[str, str] | None = None,
    k: int = 20,
    tuning: pd.DataFrame | None = None,
    reference: str = REFERENCE,
) -> Path:
    """Write one self-contained HTML report and return its path.

    The page holds ``title``, the ``context`` key/value pairs, the tables of the mean over
    the cuts (main, repeat/explore, list profile, comparison with verdicts), the tables of
    every cut, the K sweep, every PNG of ``plots`` embedded as a base64 ``data:`` URI with
    its caption, the metric definitions and, when given, the ``tuning`` grid search of the
    baselines. All text is escaped with ``html.escape``.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    esc_title = html.escape(title)
    cuts = _cuts(summary)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc_title}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc_title}</h1>",
    ]
    if context:
        items = "".join(
            f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(str(value))}</dd>"
            for key, value in context.items()
        )
        parts.append(f'<dl class="context">{items}</dl>')
    parts.append(f"<p>{html.escape(LEGEND)}</p>")

    parts.append(f"<h2>{html.escape(_section_title(MEAN, len(cuts)).capitalize())}, K={k}</h2>")
    parts += _html_section(summary, MEAN, k, reference, full=True)

    parts.append("<h2>Per cut</h2>")
    for cut in cuts:
        parts.append(f"<h3>{html.escape(_section_title(cut, len(cuts)))}, K={k}</h3>")
        parts += _html_section(summary, cut, k, reference, full=False)

    parts.append("<h2>K sweep, mean over cuts</h2>")
    for metric in SWEEP_METRICS:
        parts.append(f"<h4>{html.escape(header(metric, 'K'))}</h4>")
        parts.append(_html_table(*_sweep_cells(summary, metric, MEAN, reference)))

    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        encoded = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        caption = html.escape(plot_caption(str(name), k))
        parts.append(
            f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    if tuning is not None:
        parts.append("<h2>Tuning of the baselines (validation split)</h2>")
        parts.append(_html_tuning(tuning))

    parts.append("<h2>How to read this</h2>")
    parts.append(
        f"<p>Each method recommends a top-{k} list per user from the data before a cut date; the "
        "lists are scored against what the users bought afterwards, and every metric is a mean "
        "over the users. Intervals come from resampling the users (the same draws for every "
        "method, so differences are paired). A '-' marks a value that does not apply or was "
        "not measured.</p>"
    )
    definitions = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in metric_definitions(k)
    )
    parts.append(f"<ul>{definitions}</ul>")
    parts += ["</body>", "</html>", ""]
    out.write_text("\n".join(parts), encoding="utf-8")
    log.info("report: wrote %s", out)
    return out
