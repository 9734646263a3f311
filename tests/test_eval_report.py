"""Evaluation report on the bootstrap summary: Markdown tables, PNG plots, HTML page."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest

from jobs.evaluate import bootstrap, report

NAN = math.nan
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CUTS = ["2011-10-01", "2011-09-17"]  # deliberately not in date order
METHODS = ["als", "pipeline", "repeat", "pipeline[smollm2]"]  # pipeline not first
KS = [5, 10, 20, 50]
QUALITY = list(report.QUALITY_METRICS)
DESCRIPTIVE = [
    "list_length",
    "has_list",
    "repeat_share",
    "discovery_slots",
    "category_width",
    "intra_list_diversity",
    "novelty",
    "reason_share",
]
BINARY = {"hit", "has_list", "new_item_hit", "new_category_hit"}
OPTIONAL = {"recall_repeat", "recall_new_item", "recall_new_category", "new_item_hit", "new_category_hit"}


def per_user_frame(users: int = 25, seed: int = 3) -> pd.DataFrame:
    """Random per-user metrics for every (cut, method, k); some users not eligible (NaN)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cut in CUTS:
        for method in METHODS:
            for k in KS:
                for user in range(users):
                    row = {"cut": cut, "method": method, "k": k, "user_id": f"u{user}"}
                    for metric in QUALITY + DESCRIPTIVE:
                        value = float(rng.random() < 0.4) if metric in BINARY else rng.random()
                        if metric in OPTIONAL and rng.random() < 0.3:
                            value = NAN
                        row[metric] = value
                    row["list_length"] *= k
                    row["novelty"] *= 12
                    rows.append(row)
    return pd.DataFrame(rows)


def summary_row(
    cut, method, k, metric, value, lo=NAN, hi=NAN, diff=NAN, diff_lo=NAN, diff_hi=NAN, verdict=None
):
    return dict(zip(bootstrap.SUMMARY_COLUMNS, (cut, method, k, metric, value, lo, hi, diff, diff_lo, diff_hi, verdict), strict=True))  # fmt: skip


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(bootstrap.SUMMARY_COLUMNS))


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    """A realistic summary: bootstrap output plus coverage and operational point values."""
    out = bootstrap.summarize(
        per_user_frame(), QUALITY + DESCRIPTIVE, "pipeline", n_resamples=200, higher_is_better=QUALITY
    )
    extra = []
    for cut in [*CUTS, "mean"]:
        for i, method in enumerate(METHODS):
            for k in KS:
                extra.append(summary_row(cut, method, k, "coverage", 0.01 * (i + 1) + 0.001 * k))
        for k in KS:
            extra.append(summary_row(cut, "pipeline[smollm2]", k, "parse_success", 0.975))
            extra.append(summary_row(cut, "pipeline[smollm2]", k, "latency_p95_ms", 2400.4))
    return pd.concat([out, frame(*extra)], ignore_index=True)


def cells(line: str) -> list[str]:
    """Cells of one Markdown table line (split on unescaped ``|``), stripped."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def table_dicts(markdown: str) -> list[dict[str, str]]:
    """Rows of a Markdown table as {header: cell}."""
    lines = markdown.splitlines()
    headers = cells(lines[0])
    return [dict(zip(headers, cells(line), strict=True)) for line in lines[2:]]


def assert_png(path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, (path, len(data))
    return data


# --------------------------------------------------------------------------- values


def test_format_value_kinds_sign_and_missing():
    assert report.format_value(0.12345, "rate") == "0.1235"
    assert report.format_value(6.456, "dec2") == "6.46"
    assert report.format_value(412.34, "dec1") == "412.3"
    assert report.format_value(2400.6, "int") == "2401"
    assert report.format_value(0.0421, "rate", signed=True) == "+0.0421"
    assert report.format_value(-0.0421, "rate", signed=True) == "-0.0421"
    assert report.format_value(NAN, "rate") == "-"
    assert report.format_value(None, "rate") == "-"
    with pytest.raises(ValueError, match="kind"):
        report.format_value(1.0, "percent")


def test_metric_groups_have_headers_and_definitions():
    groups = report.MAIN_METRICS + report.REPEAT_EXPLORE_METRICS + report.DESCRIPTIVE_METRICS
    assert len(set(groups)) == len(groups)
    definitions = dict(report.metric_definitions(10))
    for metric in groups:
        head = report.header(metric, 10)
        assert head in definitions and definitions[head].endswith(".")
    assert report.header("recall", 10) == "recall@10"
    assert report.header("new_category_hit", 10) == "new-cat hit@10"
    assert report.header("recall_repeat", 10) == "recall repeat"
    assert report.header("recall_new_category", 10) == "recall new-cat"
    assert report.header("repeat_share", 10) == "repeat share"
    assert report.header("discovery_precision", 10) == "new-cat hits/slot"
    assert "top-10" in definitions["recall@10"]


# --------------------------------------------------------------------------- format_table


def test_format_table_cell_shows_value_and_interval():
    summary = frame(
        summary_row("2011-09-17", "pipeline", 10, "recall", 0.12345, 0.11, 0.135),
        summary_row("2011-09-17", "pipeline", 10, "list_length", 9.456, 9.1, 9.8),
        summary_row("2011-09-17", "pipeline", 10, "coverage", 0.3),  # no interval
        summary_row("2011-09-17", "pipeline", 20, "recall", 0.9, 0.8, 0.95),  # other K
        summary_row("mean", "pipeline", 10, "recall", 0.5, 0.4, 0.6),  # other cut
    )
    text = report.format_table(summary, "2011-09-17", 10, report.MAIN_METRICS)
    assert table_dicts(text) == [
        {
            "method": "pipeline",
            "recall@10": "0.1235 [0.1100, 0.1350]",
            "list length": "9.46 [9.10, 9.80]",
            "coverage": "0.3000",
        }
    ]


def test_format_table_pipeline_first_then_order_of_appearance(summary):
    hand = frame(
        summary_row("mean", "zeta", 20, "recall", 0.1),
        summary_row("mean", "pipeline", 20, "recall", 0.2),
        summary_row("mean", "als", 20, "recall", 0.3),
    )
    methods = [row["method"] for row in table_dicts(report.format_table(hand, "mean", 20, ["recall"]))]
    assert methods == ["pipeline", "zeta", "als"]

    rows = table_dicts(report.format_table(summary, "mean", 20, report.MAIN_METRICS))
    assert [row["method"] for row in rows] == ["pipeline", "als", "pipeline[smollm2]", "repeat"]
    expected = summary.query("cut == 'mean' and method == 'repeat' and k == 20 and metric == 'ndcg'").iloc[0]
    assert rows[3]["ndcg@20"] == (f"{expected['value']:.4f} [{expected['lo']:.4f}, {expected['hi']:.4f}]")


def test_format_table_missing_metric_and_nan_show_dash():
    summary = frame(
        summary_row("mean", "pipeline", 20, "recall", 0.2, 0.1, 0.3),
        summary_row("mean", "pipeline", 20, "ndcg", 0.1, 0.05, 0.15),
        summary_row("mean", "als", 20, "recall", NAN, NAN, NAN),  # NaN value
        # als has no ndcg row at all
    )
    rows = table_dicts(report.format_table(summary, "mean", 20, report.MAIN_METRICS))
    assert list(rows[0]) == ["method", "recall@20", "ndcg@20"]  # metrics absent everywhere left out
    assert rows[1] == {"method": "als", "recall@20": "-", "ndcg@20": "-"}


def test_format_table_is_markdown_with_right_aligned_numbers_and_escaped_pipe():
    summary = frame(
        summary_row("mean", "pipeline", 20, "recall", 0.2, 0.1, 0.3),
        summary_row("mean", "a|b", 20, "recall", 0.1),
        summary_row("mean", "a|b", 20, "hit", 0.4, 0.3, 0.5),
    )
    lines = report.format_table(summary, "mean", 20, report.MAIN_METRICS).splitlines()
    separator = cells(lines[1])
    assert re.fullmatch(r"-{3,}", separator[0])
    assert all(re.fullmatch(r"-{2,}:", s) for s in separator[1:])
    assert {len(cells(line)) for line in lines} == {3}
    assert cells(lines[3])[0] == "a\\|b"


# --------------------------------------------------------------------------- format_comparison


def test_format_comparison_takes_the_verdict_from_the_input():
    summary = frame(
        summary_row("mean", "pipeline", 20, "recall", 0.2, 0.1, 0.3),
        summary_row("mean", "pipeline", 20, "hit", 0.5, 0.4, 0.6),
        summary_row("mean", "pipeline", 20, "list_length", 9.0, 8.0, 10.0),
        # Point difference positive but the verdict says worse: the report must say worse.
        summary_row("mean", "als", 20, "recall", 0.17, 0.1, 0.2, 0.03, -0.01, 0.07, "worse"),
        # Point difference negative, verdict better.
        summary_row("mean", "als", 20, "hit", 0.5421, 0.5, 0.6, -0.0421, -0.051, -0.033, "better"),
        summary_row("mean", "als", 20, "list_length", 5.0, 4.0, 6.0, 4.0, 3.0, 5.0, "higher"),
        summary_row("mean", "repeat", 20, "recall", 0.2, 0.1, 0.3, 0.0, -0.02, 0.02, "not distinguishable"),
    )
    rows = table_dicts(report.format_comparison(summary, "mean", 20, report.MAIN_METRICS))
    assert [row["baseline"] for row in rows] == ["als", "repeat"]  # no row for the reference
    assert list(rows[0]) == ["baseline", "recall@20", "hit@20"]  # descriptive list_length left out
    assert rows[0]["recall@20"] == "+0.0300 [-0.0100, +0.0700] worse"
    assert rows[0]["hit@20"] == "-0.0421 [-0.0510, -0.0330] better"
    assert rows[1] == {"baseline": "repeat", "recall@20": "+0.0000 [-0.0200, +0.0200] not distinguishable", "hit@20": "-"}  # fmt: skip


def test_format_comparison_on_a_bootstrap_summary_matches_every_verdict(summary):
    k = 10
    rows = table_dicts(report.format_comparison(summary, "2011-09-17", k, report.REPEAT_EXPLORE_METRICS))
    assert [row["baseline"] for row in rows] == ["als", "pipeline[smollm2]", "repeat"]
    metrics = ["recall_repeat", "recall_new_item", "recall_new_category", "discovery_precision"]
    assert list(rows[0])[1:] == [report.header(m, k) for m in metrics]
    for row in rows:
        for metric in metrics:
            expected = summary.query(
                "cut == '2011-09-17' and k == @k and method == @row['baseline'] and metric == @metric"
            ).iloc[0]
            cell = row[report.header(metric, k)]
            assert cell.startswith(f"{expected['diff']:+.4f} [{expected['diff_lo']:+.4f}, ")
            assert cell.endswith("] " + expected["verdict"]), cell


# --------------------------------------------------------------------------- format_report


def test_format_report_sections_in_date_order_then_mean_and_k_sweep(summary):
    text = report.format_report(summary.sort_values("cut", ascending=False), k=20)  # later cut first
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert titles == ["### cut 2011-09-17", "### cut 2011-10-01", "### mean over 2 cuts", "### K sweep (mean over 2 cuts)"]  # fmt: skip
    sweep = text[text.index("### K sweep") :]
    for k in KS:
        assert f"recall@{k}" in sweep and f"new-cat hit@{k}" in sweep
    sweep_rows = [line for line in sweep.splitlines() if line.startswith("| pipeline ")]
    assert len(sweep_rows) == 2  # one per swept metric
    # Every section holds the main, repeat/explore and comparison tables at K=20 only.
    for section in text.split("### ")[1:4]:
        assert "recall@20" in section and "recall repeat" in section and "minus baseline" in section
        assert "recall@10" not in section
    mean = text[text.index("### mean") : text.index("### K sweep")]
    assert "cat width" in mean and "p95 ms" in mean


def test_format_report_words_better_worse_only_in_verdict_cells(summary):
    text = report.format_report(summary, k=5)
    prose = [line for line in text.splitlines() if not line.startswith("|") and line != report.LEGEND]
    assert not any(re.search(r"\b(better|worse|higher|lower)\b", line) for line in prose)
    n_better = (summary.query("k == 5 and metric in @QUALITY")["verdict"] == "better").sum()
    assert text.count(" better") == n_better


def test_format_report_empty_summary():
    assert "no results" in report.format_report(frame(), k=20)


# --------------------------------------------------------------------------- write_plots


def test_write_plots_one_per_cut_mean_sweep_and_repeat_explore(summary, tmp_path):
    out_dir = tmp_path / "nested" / "plots"  # does not exist yet
    plots = report.write_plots(summary, out_dir, k=20)
    assert set(plots) == {"cut_20110917", "cut_20111001", "cut_mean", "k_sweep", "repeat_explore"}
    for name, path in plots.items():
        assert path == out_dir / f"{name}.png"
        assert_png(path)


def test_write_plots_nan_only_and_empty_input(summary, tmp_path):
    nan_only = summary.assign(value=NAN, lo=NAN, hi=NAN)
    # A point value outside its interval (possible for a percentile interval) must not fail either.
    outside = frame(summary_row("mean", "pipeline", 20, "recall", 0.5, 0.55, 0.6))
    plots = report.write_plots(pd.concat([outside, nan_only], ignore_index=True), tmp_path / "nan", k=20)
    assert len(plots) == 5
    for path in plots.values():
        assert_png(path)
    empty = report.write_plots(frame(), tmp_path / "empty", k=20)
    assert set(empty) == {"cut_mean", "k_sweep", "repeat_explore"}
    for path in empty.values():
        assert_png(path)


def test_write_plots_leaves_no_open_pyplot_figures(summary, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    report.write_plots(summary, tmp_path, k=10)
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------- write_html


def test_write_html_is_self_contained_escaped_and_embeds_every_plot(summary, tmp_path):
    renamed = summary.replace({"method": {"repeat": "<b>repeat</b>"}})
    plots = report.write_plots(renamed, tmp_path / "plots", k=20)
    title = "Discovery <eval> & baselines"
    context = {"dataset": "online_retail", "run id": "<abc>"}
    out = report.write_html(renamed, plots, tmp_path / "site" / "report.html", title, context, k=20)

    assert out == tmp_path / "site" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert "Discovery &lt;eval&gt; &amp; baselines" in text and title not in text
    assert "&lt;abc&gt;" in text and "<abc>" not in text
    assert "&lt;b&gt;repeat&lt;/b&gt;" in text and "<b>repeat</b>" not in text

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == len(plots) == 5
    decoded = [base64.b64decode(b64) for b64 in images]
    assert sorted(decoded) == sorted(path.read_bytes() for path in plots.values())
    assert len(re.findall(r"\bsrc=", text)) == len(images)  # no other source
    assert "href=" not in text and ".png" not in text.replace("data:image/png", "")
    assert text.count("<figcaption>") == 5 and "cut 2011-09-17" in text

    # Mean, per-cut, comparison and sweep tables; definitions; no tuning section.
    for piece in ["Mean over 2 cuts", "Per cut", "2011-10-01", "recall repeat", "minus baseline", "K sweep"]:
        assert piece in text
    for k in KS:
        assert f"new-cat hit@{k}" in text
    assert "not distinguishable" in text
    how_to = text[text.index("How to read this") :]
    for word in ["recall@20", "new-cat hits/slot", "cosine", "-log2", "catalog"]:
        assert word in how_to
    assert "Tuning" not in text


def test_write_html_shows_the_tuning_table(summary, tmp_path):
    tuning = pd.DataFrame(
        {
            "baseline": ["item_knn", "item_knn", "als"],
            "params": ["{'neighbours': 50}", "{'neighbours': 200}", "{'rank': 64, 'reg': 0.1}"],
            "score": [0.12345, 0.1, 0.2],
            "chosen": [True, False, True],
        }
    )
    plots = report.write_plots(summary, tmp_path / "plots", k=20)
    out = report.write_html(summary, plots, tmp_path / "r.html", "Report", None, 20, tuning=tuning)
    text = out.read_text(encoding="utf-8")
    assert 'class="context"' not in text
    section = text[text.index("Tuning") : text.index("How to read this")]
    assert "{&#x27;neighbours&#x27;: 50}" in section and "0.1235" in section
    assert section.count('<tr class="chosen">') == 2
    assert all(column in section for column in ["baseline", "params", "score", "chosen"])
