"""Evaluation report: Markdown table, PNG plots and the self-contained HTML page."""

from __future__ import annotations

import base64
import math
import re

import pandas as pd
import pytest

from jobs.evaluate import report

NAN = math.nan
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cells(line: str) -> list[str]:
    """Cells of one Markdown table line, stripped."""
    assert line.startswith("|") and line.endswith("|")
    return [c.strip() for c in line[1:-1].split("|")]


def sample_table() -> pd.DataFrame:
    """Three methods; baselines have no operational figures; some NaN metrics."""
    return pd.DataFrame(
        {
            "method": ["pipeline[smollm2]", "popularity", "als"],
            "recall": [0.12345, 0.05, NAN],
            "hit_rate": [0.5, 0.25, 0.3],
            "ndcg": [0.08, 0.031, 0.04],
            "new_item_hit_rate": [0.2, 0.01, 0.1],
            "new_category_hit_rate": [0.15, 0.0, 0.07],
            "category_width": [6.456, 2.0, 3.5],
            "intra_list_diversity": [0.61, 0.22, 0.4],
            "novelty": [11.23456, 7.1, 9.0],
            "coverage": [0.3, 0.001, 0.12],
            "reason_share": [0.9, NAN, NAN],
            "users_with_list": [1.0, 1.0, 0.98333],
            "parse_success": [0.975, NAN, NAN],
            "tokens_per_user": [412.34, NAN, NAN],
            "latency_p50_ms": [812.6, NAN, NAN],
            "latency_p95_ms": [2400.4, NAN, NAN],
            "failures": [3.0, NAN, NAN],
        }
    )


def sample_per_user(table: pd.DataFrame) -> pd.DataFrame:
    """A few users per method with a NaN width mixed in."""
    rows = []
    for i, method in enumerate(table["method"]):
        for user in range(6):
            width = NAN if user == 0 else float(1 + (user + i) % 5)
            rows.append((method, f"u{user}", width, user % 2))
    return pd.DataFrame(rows, columns=["method", "user_id", "category_width", "hits"])


def assert_png(path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, (path, len(data))
    return data


# --------------------------------------------------------------------------- format_table


def test_format_table_headers_follow_canonical_order_and_k():
    table = sample_table()
    shuffled = table[list(reversed(table.columns))]  # column order in the frame must not matter
    lines = report.format_table(shuffled, k=10).splitlines()
    assert cells(lines[0]) == [
        "method",
        "recall@10",
        "hit@10",
        "ndcg@10",
        "new-item hit",
        "new-cat hit",
        "cat width",
        "diversity",
        "novelty",
        "coverage",
        "reason share",
        "users w/ list",
        "parse ok",
        "tokens/user",
        "p50 ms",
        "p95 ms",
        "failures",
    ]
    assert len(lines) == 2 + len(table)


def test_format_table_formats_values_and_marks_nan():
    lines = report.format_table(sample_table()).splitlines()
    header = cells(lines[0])
    first = dict(zip(header, cells(lines[2]), strict=True))
    assert first == {
        "method": "pipeline[smollm2]",
        "recall@20": "0.1235",
        "hit@20": "0.5000",
        "ndcg@20": "0.0800",
        "new-item hit": "0.2000",
        "new-cat hit": "0.1500",
        "cat width": "6.46",
        "diversity": "0.6100",
        "novelty": "11.23",
        "coverage": "0.3000",
        "reason share": "0.9000",
        "users w/ list": "1.0000",
        "parse ok": "0.9750",
        "tokens/user": "412.3",
        "p50 ms": "813",
        "p95 ms": "2400",
        "failures": "3",
    }
    als = dict(zip(header, cells(lines[4]), strict=True))
    assert als["method"] == "als"
    assert als["recall@20"] == "-"
    assert als["p95 ms"] == "-" and als["failures"] == "-"
    assert als["users w/ list"] == "0.9833"


def test_format_table_is_valid_markdown_with_right_aligned_numbers():
    table = sample_table()[["method", "recall", "novelty"]]
    lines = report.format_table(table).splitlines()
    separator = cells(lines[1])
    assert re.fullmatch(r"-{3,}", separator[0])  # method: default (left) alignment
    assert all(re.fullmatch(r"-{2,}:", s) for s in separator[1:])  # numbers: right-aligned
    # Every line has the same number of cells, and missing columns are left out.
    assert {len(cells(line)) for line in lines} == {3}
    assert "coverage" not in lines[0] and "p50 ms" not in lines[0]


def test_format_table_escapes_pipe_in_method_and_needs_method_column():
    table = pd.DataFrame({"method": ["a|b"], "recall": [0.1]})
    row = report.format_table(table).splitlines()[2]
    assert "a\\|b" in row
    assert len(re.split(r"(?<!\\)\|", row)) == 4  # ['', method, recall, '']
    with pytest.raises(ValueError, match="method"):
        report.format_table(pd.DataFrame({"recall": [0.1]}))


# --------------------------------------------------------------------------- write_plots


def test_write_plots_writes_three_pngs_with_nan(tmp_path):
    table = sample_table()
    out_dir = tmp_path / "nested" / "plots"  # does not exist yet
    plots = report.write_plots(table, sample_per_user(table), out_dir, k=20)
    assert set(plots) == {"metrics_per_method", "category_width", "newcat_vs_recall"}
    for name, path in plots.items():
        assert path.parent == out_dir
        assert path.name == f"{name}.png"
        assert_png(path)


def test_write_plots_single_method_and_empty_per_user(tmp_path):
    table = pd.DataFrame(
        {"method": ["pipeline"], "recall": [0.2], "new_category_hit_rate": [NAN], "novelty": [9.5]}
    )
    per_user = pd.DataFrame(columns=["method", "user_id", "category_width", "hits"])
    plots = report.write_plots(table, per_user, tmp_path)
    assert len(plots) == 3
    for path in plots.values():
        assert_png(path)


def test_write_plots_leaves_no_open_pyplot_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    table = sample_table()
    report.write_plots(table, sample_per_user(table), tmp_path)
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------- write_html


def test_write_html_is_self_contained_and_escaped(tmp_path):
    table = sample_table()
    table.loc[1, "method"] = "pop&rank"
    plots = report.write_plots(table, sample_per_user(table), tmp_path / "plots")
    title = "Discovery <eval> & baselines"
    context = {"dataset": "online_retail", "cut date": "2011-09-01", "run id": "<abc>"}
    out = report.write_html(table, plots, tmp_path / "site" / "report.html", title, context=context)

    assert out == tmp_path / "site" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert "Discovery &lt;eval&gt; &amp; baselines" in text
    assert title not in text
    assert "&lt;abc&gt;" in text and "<abc>" not in text
    assert "online_retail" in text and "2011-09-01" in text
    for method in ["pipeline[smollm2]", "pop&amp;rank", "als"]:
        assert method in text
    # Same headers and number formatting as the Markdown table.
    assert "recall@20" in text and "0.1235" in text and "new-cat hit" in text

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3
    decoded = [base64.b64decode(b64) for b64 in images]
    assert all(data[:8] == PNG_SIGNATURE for data in decoded)
    assert sorted(decoded) == sorted(path.read_bytes() for path in plots.values())
    # No reference to a file beside the page.
    assert ".png" not in text.replace("data:image/png", "")

    how_to = text[text.index("How to read this") :]
    for word in ["recall@20", "new-cat hit", "cat width", "cosine", "-log2", "catalog"]:
        assert word in how_to


def test_write_html_without_context(tmp_path):
    table = pd.DataFrame({"method": ["pipeline"], "recall": [0.2]})
    plots = report.write_plots(table, pd.DataFrame(columns=["method", "category_width"]), tmp_path)
    out = report.write_html(table, plots, tmp_path / "r.html", "Report", k=5)
    text = out.read_text(encoding="utf-8")
    assert "<h1>Report</h1>" in text
    assert "recall@5" in text and "0.2000" in text
    assert 'class="context"' not in text
    assert text.count("data:image/png;base64,") == 3
