"""Evaluation report: a Markdown table, three plots and a self-contained HTML page.

Everything here works on small pandas frames that the evaluation job has already
collected to the driver, so no Spark is needed:

- ``table``: one row per evaluated method (column ``method``) with metric columns
  such as ``recall``, ``ndcg``, ``novelty`` and optional operational columns such as
  ``latency_p95_ms``. Columns may be missing and values may be NaN.
- ``per_user``: one row per (method, user) with ``category_width`` and ``hits``.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: a bare
``Figure`` renders PNGs with the Agg renderer, needs no display, does not switch
the process-wide backend, and is never registered with pyplot's figure manager,
so nothing has to be closed and nothing leaks between calls.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# (column, header, format) in display order. ``{k}`` in a header is filled with K.
# Formats: "rate" -> 4 decimals, "dec2" -> 2 decimals, "dec1" -> 1 decimal, "int".
METRIC_COLUMNS: list[tuple[str, str, str]] = [
    ("recall", "recall@{k}", "rate"),
    ("hit_rate", "hit@{k}", "rate"),
    ("ndcg", "ndcg@{k}", "rate"),
    ("new_item_hit_rate", "new-item hit", "rate"),
    ("new_category_hit_rate", "new-cat hit", "rate"),
    ("category_width", "cat width", "dec2"),
    ("intra_list_diversity", "diversity", "rate"),
    ("novelty", "novelty", "dec2"),
    ("coverage", "coverage", "rate"),
    ("reason_share", "reason share", "rate"),
    ("users_with_list", "users w/ list", "rate"),
]
OPS_COLUMNS: list[tuple[str, str, str]] = [
    ("parse_success", "parse ok", "rate"),
    ("tokens_per_user", "tokens/user", "dec1"),
    ("latency_p50_ms", "p50 ms", "int"),
    ("latency_p95_ms", "p95 ms", "int"),
    ("failures", "failures", "int"),
]
ALL_COLUMNS = METRIC_COLUMNS + OPS_COLUMNS

# Metrics on a 0..1 scale, drawn together in the first panel of the metrics plot.
RATE_METRICS = [
    "recall",
    "hit_rate",
    "ndcg",
    "new_item_hit_rate",
    "new_category_hit_rate",
    "intra_list_diversity",
    "coverage",
]
# Metrics on their own scales, drawn in the second panel.
SCALE_METRICS = ["category_width", "novelty"]

PLOT_FILES = {
    "metrics_per_method": "metrics_per_method.png",
    "category_width": "category_width.png",
    "newcat_vs_recall": "newcat_vs_recall.png",
}

PLOT_CAPTIONS = {
    "metrics_per_method": "Metrics per method",
    "category_width": "Category width per list",
    "newcat_vs_recall": "New-category hit rate against recall",
}

MISSING = "-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- table


def _label(column: str, k: int) -> str:
    """Short axis/legend label for a metric column, e.g. ``recall@20``."""
    for name, header, _ in ALL_COLUMNS:
        if name == column:
            return header.format(k=k)
    return column


def format_value(value: Any, kind: str) -> str:
    """Format one cell: ``kind`` is "rate", "dec2", "dec1" or "int"; NaN/None -> '-'."""
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
    if kind == "rate":
        return f"{number:.4f}"
    if kind == "dec2":
        return f"{number:.2f}"
    if kind == "dec1":
        return f"{number:.1f}"
    if kind == "int":
        return str(int(round(number)))
    raise ValueError(f"unknown format kind {kind!r}")


def _table_cells(table: pd.DataFrame, k: int) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows: method first, then the known columns present.

    Columns keep the canonical order of ``ALL_COLUMNS`` whatever their order in
    ``table``; columns the report does not know are left out.
    """
    if "method" not in table.columns:
        raise ValueError("table needs a 'method' column")
    present = [(name, header, kind) for name, header, kind in ALL_COLUMNS if name in table.columns]
    headers = ["method"] + [header.format(k=k) for _, header, _ in present]
    rows = []
    for _, record in table.iterrows():
        row = [str(record["method"])]
        row += [format_value(record[name], kind) for name, _, kind in present]
        rows.append(row)
    return headers, rows


def format_table(table: pd.DataFrame, k: int = 20) -> str:
    """Render ``table`` as a Markdown table (method left-aligned, numbers right-aligned).

    Cells are padded so the text also lines up on a console. A ``|`` inside a
    method name is escaped so it cannot break the row.
    """
    headers, rows = _table_cells(table, k)
    rows = [[row[0].replace("|", "\\|")] + row[1:] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    separator = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]
    lines = [line(headers), "| " + " | ".join(separator) + " |"]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _numeric(table: pd.DataFrame, column: str) -> np.ndarray:
    """Column as floats (NaN where missing or not a number); all-NaN if absent."""
    if column not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)


def _no_data(ax, message: str) -> None:
    """Write a centred note on an empty axis."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _grouped_bars(ax, table: pd.DataFrame, columns: list[str], k: int) -> bool:
    """Draw one group of bars per method, one bar per column; NaN bars are skipped.

    Returns False (and draws nothing) when none of the columns has a value.
    """
    series = [(c, _numeric(table, c)) for c in columns]
    series = [(c, v) for c, v in series if not np.all(np.isnan(v))]
    if not series:
        return False
    x = np.arange(len(table))
    width = 0.8 / len(series)
    for i, (column, values) in enumerate(series):
        keep = ~np.isnan(values)
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x[keep] + offset, values[keep], width, label=_label(column, k))
    ax.set_xticks(x)
    ax.set_xticklabels(table["method"].astype(str), rotation=30, ha="right")
    ax.set_xlabel("method")
    ax.grid(axis="y", alpha=0.3)
    return True


def _plot_metrics(table: pd.DataFrame, path: Path, k: int) -> None:
    """Grouped bars of the 0..1 metrics, plus a panel for width and novelty."""
    fig = Figure(figsize=(13, 5.5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.4]})
    if _grouped_bars(left, table, RATE_METRICS, k):
        left.set_ylim(0, 1.05)
        left.set_ylabel("value (0..1)")
        left.set_title(f"Accuracy, discovery and coverage @{k}")
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=4, fontsize="small")
    else:
        _no_data(left, "no 0..1 metrics")
    if _grouped_bars(right, table, SCALE_METRICS, k):
        right.set_ylabel("categories per list / bits")
        right.set_title("Category width and novelty")
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize="small")
    else:
        _no_data(right, "no width or novelty")
    fig.suptitle(f"Metrics per method (K={k})")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _method_order(table: pd.DataFrame, per_user: pd.DataFrame) -> list[str]:
    """Methods in table order, then any extra methods found only in per_user."""
    order = [str(m) for m in table["method"]] if "method" in table.columns else []
    if "method" in per_user.columns:
        order += [str(m) for m in per_user["method"].drop_duplicates() if str(m) not in order]
    return order


def _plot_category_width(table: pd.DataFrame, per_user: pd.DataFrame, path: Path, k: int) -> None:
    """Box plot of distinct categories per list, one box per method (mean marked)."""
    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    data, labels = [], []
    if {"method", "category_width"} <= set(per_user.columns):
        widths = pd.to_numeric(per_user["category_width"], errors="coerce")
        methods = per_user["method"].astype(str)
        for method in _method_order(table, per_user):
            values = widths[methods == method].dropna().to_numpy()
            if len(values):
                data.append(values)
                labels.append(method)
    if data:
        ax.boxplot(data, tick_labels=labels, showmeans=True)
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_ha("right")
        ax.set_xlabel("method")
        ax.set_ylabel("distinct categories per list")
        ax.grid(axis="y", alpha=0.3)
    else:
        _no_data(ax, "no per-user category width")
    ax.set_title(f"Category width of each top-{k} list (box: quartiles, triangle: mean)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _plot_newcat_vs_recall(table: pd.DataFrame, path: Path, k: int) -> None:
    """Scatter of new-category hit rate against recall, one labelled point per method."""
    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    recall = _numeric(table, "recall")
    newcat = _numeric(table, "new_category_hit_rate")
    keep = ~(np.isnan(recall) | np.isnan(newcat))
    if keep.any():
        ax.scatter(recall[keep], newcat[keep], s=40, zorder=3)
        for method, x, y in zip(table["method"].astype(str)[keep], recall[keep], newcat[keep], strict=True):
            ax.annotate(method, (x, y), xytext=(5, 5), textcoords="offset points", fontsize="small")
        # Start both axes just below 0 so points at exactly 0 stay visible.
        x_top = max(float(recall[keep].max()) * 1.25, 0.05)
        y_top = max(float(newcat[keep].max()) * 1.25, 0.05)
        ax.set_xlim(-0.03 * x_top, x_top)
        ax.set_ylim(-0.03 * y_top, y_top)
        ax.grid(alpha=0.3)
    else:
        _no_data(ax, "no method has both recall and new-category hit rate")
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel("new-category hit rate")
    ax.set_title("Discovery against accuracy (up and right is better)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def write_plots(
    table: pd.DataFrame, per_user: pd.DataFrame, out_dir: str | Path, k: int = 20
) -> dict[str, Path]:
    """Write the three report PNGs into ``out_dir`` (created if needed).

    Returns ``{name: path}`` for ``metrics_per_method``, ``category_width`` and
    ``newcat_vs_recall``. NaN values are skipped; a panel with nothing to show
    says so instead of failing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / filename for name, filename in PLOT_FILES.items()}
    _plot_metrics(table, paths["metrics_per_method"], k)
    _plot_category_width(table, per_user, paths["category_width"], k)
    _plot_newcat_vs_recall(table, paths["newcat_vs_recall"], k)
    return paths


# --------------------------------------------------------------------------- HTML


def metric_definitions(k: int = 20) -> list[tuple[str, str]]:
    """One-sentence definition of each column, as (header, sentence) pairs."""
    return [
        (
            f"recall@{k}",
            f"Share of each user's purchases after the cut date that appear in their top-{k} list, "
            "averaged over users.",
        ),
        (
            f"hit@{k}",
            f"Share of users whose top-{k} list contains at least one item they bought after the cut date.",
        ),
        (
            f"ndcg@{k}",
            "Like recall, but a hit near the top of the list counts more than one near the bottom "
            "(1.0 = all future purchases ranked first).",
        ),
        (
            "new-item hit",
            "Share of users with a future purchase of an item they had never bought before "
            "whose list contained such an item.",
        ),
        (
            "new-cat hit",
            "Share of users with a future purchase in a category new to them whose list hit such an item: "
            "the main discovery measure.",
        ),
        ("cat width", "Number of distinct categories in a list, averaged over users."),
        (
            "diversity",
            "Mean pairwise cosine distance between the embeddings of the items in a list (0 = all alike).",
        ),
        (
            "novelty",
            "Mean of -log2(popularity) of the recommended items, in bits: "
            "higher means less popular, less obvious items.",
        ),
        ("coverage", "Share of the catalog that appears in at least one user's list."),
        ("reason share", "Share of recommended items that come with a stated reason."),
        ("users w/ list", "Share of the evaluated users who received a non-empty list."),
        (
            "parse ok, tokens/user, p50 ms, p95 ms, failures",
            "Operational figures for language-model methods: share of replies that parsed, "
            "tokens spent per user, median and 95th-percentile latency, and failed calls.",
        ),
    ]


def _html_table(table: pd.DataFrame, k: int) -> str:
    """The metrics table as HTML, with the same headers and formatting as Markdown."""
    headers, rows = _table_cells(table, k)
    head = "".join(
        f'<th class="{"txt" if i == 0 else "num"}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"txt" if i == 0 else "num"}">{html.escape(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f2f2f2; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.txt { text-align: left; }
dl.context { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dl.context dt { font-weight: bold; }
dl.context dd { margin: 0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
"""


def write_html(
    table: pd.DataFrame,
    plots: Mapping[str, str | Path],
    out_path: str | Path,
    title: str,
    context: Mapping[str, Any] | None = None,
    k: int = 20,
) -> Path:
    """Write one self-contained HTML report and return its path.

    The page holds ``title``, the ``context`` key/value pairs (dataset, cut date,
    run id, ...), the metrics table, every PNG in ``plots`` embedded as a base64
    ``data:image/png`` URI (so the file needs nothing beside it), and a short
    "how to read this" section. All text is escaped with ``html.escape``.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    esc_title = html.escape(title)
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

    parts.append("<h2>Results</h2>")
    parts.append(_html_table(table, k))

    parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        data = Path(path).read_bytes()
        encoded = base64.b64encode(data).decode("ascii")
        caption = html.escape(PLOT_CAPTIONS.get(name, name))
        parts.append(
            f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    parts.append("<h2>How to read this</h2>")
    parts.append(
        f"<p>Each method recommends a top-{k} list per user from data up to the cut date; "
        "the lists are scored against what the users bought afterwards. "
        "A '-' marks a value that does not apply or was not measured.</p>"
    )
    definitions = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in metric_definitions(k)
    )
    parts.append(f"<ul>{definitions}</ul>")
    parts += ["</body>", "</html>", ""]
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
