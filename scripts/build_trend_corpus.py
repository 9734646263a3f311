"""Build the bundled trend corpus: weekly "what is rising" notes of the Online Retail data.

The default run (conf/local.yaml) reads trend documents from ``data/trend_corpus``, a
folder source in the documented trend document format (docs/trends.md), so that a user
sees where their own sources plug in. Its notes are computed from the bundled data with
the same code as the ``derived`` source (``jobs.trends.signals.weekly_notes``): one per
ISO week and category with a rising decision factor, published on the Monday after the
week, so a run as of an earlier date (an evaluation cut) never sees a later note.

Run after a pipeline run has filled a warehouse (``discovery pipeline``)::

    .venv/bin/python scripts/build_trend_corpus.py --warehouse warehouse
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

OUT = ROOT / "data" / "trend_corpus" / "weekly_notes" / "online_retail.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--warehouse", default="warehouse", help="storage.root of a warehouse after a pipeline run"
    )
    parser.add_argument("--weeks", type=int, default=60, help="weeks of notes, ending at the last event day")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    from core import tables
    from core.categories import load_rules
    from core.config import load_config
    from core.rundate import resolve_run_date
    from core.session import get_spark
    from jobs.trends import signals

    conf = load_config(
        overrides=[f"storage.root={args.warehouse}", "spark.master=local[2]", "trends.sources=[]"]
    )
    spark = get_spark(conf)
    tc = conf.trends
    events = tables.read(spark, conf, "bronze.events")
    run_date = resolve_run_date(spark, conf, events)
    profiles = tables.read(spark, conf, "silver.item_profiles")
    activity = signals.factor_activity(
        events.filter(F.col("dt") <= F.lit(run_date)),
        tables.read(spark, conf, "silver.item_categories"),
        profiles,
        load_rules(conf.aggregate.category_rules),
        conf.cfv.event_weights,
        conf.cfv.exclude_kinds,
    )
    titles = profiles.select("item_id", F.coalesce("short_title", "title").alias("title"))
    notes = signals.weekly_notes(
        activity, titles, run_date, args.weeks, tc.baseline_weeks, tc.min_support, tc.min_lift,
        tc.rising_per_category, source="online_retail_notes",
    ).orderBy("published_at", "title")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w", encoding="utf-8") as fh:
        for r in notes.toLocalIterator():
            doc = {
                "id": r["doc_id"],
                "title": r["title"],
                "text": r["text"],
                "published_at": r["published_at"].strftime("%Y-%m-%dT%H:%M:%S"),
                "categories": list(r["categories"]),
                "lang": r["lang"],
            }
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n += 1
    print(f"{n:,} notes written to {out.relative_to(ROOT)}", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
