"""Benchmark: how well threshold clustering finds near-duplicate product texts.

The labelled set
----------------
Built from the distinct (StockCode, Description) pairs of the bundled online-retail data
(``data/online_retail/by-day``), read by ``bench.trends.distinct_products``: product
codes only (a five-digit stem; POST, M, DOT, BANK CHARGES, AMAZONFEE, gift vouchers ...
are dropped), upper-case product descriptions only (stock notes such as "check" or
"damages" are dropped). The *family* of a code is its five-digit stem: "85123A" and
"85123B" are the same design in another colour or size. Each distinct description is
one text; a description found under two families is dropped as ambiguous.

- Groups: the families with at least 2 distinct descriptions; their descriptions share
  the family's label ("RED ENAMEL FLOWER RING", "BLACK ENAMEL FLOWER RING", ...).
- Distractors: descriptions of single-description families, each its own label; a
  seeded sample as large as the number of groups (``--singletons`` to change it).

The labels are a proxy: a few families hold unrelated designs under one stem, and
distractors may be near duplicates of a group from another stem. No method can reach
ARI 1.0 on this set; the comparison between methods is the point.

Methods compared (adjusted Rand index and normalised mutual information against the
family labels; all texts embedded once with ``udfs.embedding.encode``):

- ``threshold_clusters`` at thresholds 0.7, 0.75, 0.8, 0.85, 0.9;
- random labels with the same cluster sizes as the 0.8 run (its labels shuffled;
  median of 5 seeds): the floor, since NMI rises with the number of clusters alone;
- spherical k-means (``kmeans_labels``) told the true number of labels (groups +
  distractors), a generous baseline, and with the number of clusters the 0.8 run found.

Run
---
    .venv/bin/python bench/trend_quality.py

The table is printed and written to ``bench/out/trend_quality.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/trend_quality.py` without an installed project
    sys.path.insert(0, str(ROOT))

from bench.trends import PRODUCT_CODE, distinct_products  # noqa: E402
from udfs.clustering import cluster_quality, kmeans_labels, threshold_clusters  # noqa: E402

THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9)
REFERENCE_THRESHOLD = 0.8
RANDOM_SEEDS = 5


def labelled_set(n_singletons: int | None = None, seed: int = 0) -> tuple[list[str], np.ndarray, int, int]:
    """Texts and their family labels: near-duplicate groups plus singleton distractors.

    Parameters
    ----------
    n_singletons : int, optional
        Distractors to sample; default: as many as there are groups.
    seed : int
        Seed of the distractor sample.

    Returns
    -------
    tuple
        (texts, labels, number of groups, number of singletons); labels are int64, one
        per text, groups numbered first.
    """
    families_of: dict[str, set[str]] = defaultdict(set)
    for code, text in distinct_products():
        families_of[text].add(PRODUCT_CODE.match(code).group(1))
    texts_of: dict[str, list[str]] = defaultdict(list)
    for text, families in sorted(families_of.items()):
        if len(families) == 1:  # a text under two stems has no single true label
            texts_of[next(iter(families))].append(text)

    groups = sorted(f for f, texts in texts_of.items() if len(texts) >= 2)
    singles = sorted(f for f, texts in texts_of.items() if len(texts) == 1)
    rng = np.random.default_rng(seed)
    wanted = len(groups) if n_singletons is None else n_singletons
    picked = sorted(rng.choice(len(singles), size=min(wanted, len(singles)), replace=False).tolist())
    families = groups + [singles[i] for i in picked]

    texts, labels = [], []
    for label, family in enumerate(families):
        for text in texts_of[family]:
            texts.append(text)
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64), len(groups), len(picked)


def evaluate(vectors: np.ndarray, truth: np.ndarray, seed: int = 0) -> list[tuple[str, int, float, float]]:
    """(method, clusters, ARI, NMI) for every method compared."""
    rows = []
    found_at_reference = None
    reference_labels = None
    for threshold in THRESHOLDS:
        labels = threshold_clusters(vectors, threshold=threshold, seed=seed)
        q = cluster_quality(truth, labels)
        n_clusters = int(labels.max()) + 1
        rows.append((f"threshold_clusters {threshold}", n_clusters, q["ari"], q["nmi"]))
        if threshold == REFERENCE_THRESHOLD:
            found_at_reference, reference_labels = n_clusters, labels

    rng = np.random.default_rng(seed)
    shuffled = [cluster_quality(truth, rng.permutation(reference_labels)) for _ in range(RANDOM_SEEDS)]
    rows.append(
        (
            f"random, sizes of the {REFERENCE_THRESHOLD} run (median of {RANDOM_SEEDS})",
            found_at_reference,
            statistics.median(q["ari"] for q in shuffled),
            statistics.median(q["nmi"] for q in shuffled),
        )
    )

    n_true = int(truth.max()) + 1
    for name, k in (
        ("kmeans, k = true number of labels", n_true),
        (f"kmeans, k = clusters of the {REFERENCE_THRESHOLD} run", found_at_reference),
    ):
        labels = kmeans_labels(vectors, k, seed=seed)
        q = cluster_quality(truth, labels)
        rows.append((name, len(np.unique(labels)), q["ari"], q["nmi"]))
    return rows


def markdown(rows: list[tuple[str, int, float, float]], n_texts: int, n_groups: int, n_single: int) -> str:
    """The results table with the size of the labelled set."""
    lines = [
        "# Near-duplicate product texts: threshold_clusters against baselines",
        "",
        f"{n_texts:,} texts: {n_groups:,} StockCode families with >= 2 distinct descriptions "
        f"({n_texts - n_single:,} texts) and {n_single:,} singleton descriptions; "
        f"{n_groups + n_single:,} true labels. Embeddings: all-MiniLM-L6-v2.",
        "",
        "| method | clusters | ARI | NMI |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {clusters:,} | {ari:.3f} | {nmi:.3f} |" for name, clusters, ari, nmi in rows]
    lines += ["", "kmeans: clusters = centroids that received at least one text."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build the set, embed it, compare the methods, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--singletons", type=int, default=None, help="default: as many as groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "trend_quality.md"))
    args = parser.parse_args(argv)

    from udfs.embedding import encode

    texts, truth, n_groups, n_single = labelled_set(args.singletons, seed=args.seed)
    vectors = encode(texts)
    table = markdown(evaluate(vectors, truth, seed=args.seed), len(texts), n_groups, n_single)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
