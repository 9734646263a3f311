"""Benchmark: tokens of a buyer's raw 8-week behaviour against its digest, and LLM tokens per run.

What is measured
----------------
Over real buyers of the bundled UCI Online Retail data (a UK giftware wholesaler:
purchases and cancellations only), ``--users`` (200) users active in the 8 ISO weeks
ending at ``--run-date`` (2011-12-09), chosen deterministically (ordered by a hash of the
user id). For each user, with the functions ``jobs/compress.py`` uses:

1. **raw tokens**: the raw behaviour text (``raw_behavior_text``: one line per event,
   grouped by week, at most ``compress.max_raw_lines`` = 400 lines) — what an LLM would
   have to read without compression;
2. **digest tokens**: the hybrid digest text (``#week_category_amount_quantity_count_factors``
   rows, joined by newlines).

Both are *estimates*: ``udfs.llm.agent.estimate_tokens`` (characters / 4, rounded up),
applied the same way to both texts; a real tokenizer gives other absolute numbers, but
the ratio of two English texts of the same kind moves little.

LLM tokens per user per run, two ways of producing the digest:

- ``llm`` mode: one ``behavior_compression`` request per user and run. Input = the
  agent's prompt actually rendered for the user (system + user message, the raw text
  inside); output assumed ≈ the digest tokens (the JSON answer is longer: its size, the
  heuristic twin's JSON, is printed too).
- ``hybrid`` mode: no per-user request; the only LLM work is the ``item_profile`` agent,
  once per item (profiles are incremental: an unchanged item is never profiled again, so
  this is an upper bound per run). Its prompt is rendered for every item the chosen users
  touched in the window, plus an assumed ~60 output tokens per item (a short title, a
  category and up to six factors), and the total is divided over the chosen users.

Data: ``--warehouse PATH`` reuses a warehouse that already holds bronze, silver.item_profiles
and the silver aggregates (e.g. after ``discovery pipeline``); without it the bundled
data is ingested into a temporary warehouse (``jobs.ingest.run``, ``jobs.items.run``,
``jobs.aggregate.run``; a few minutes on 2 cores).

Run
---
    .venv/bin/python bench/tokens.py                          # temp warehouse from data/online_retail
    .venv/bin/python bench/tokens.py --warehouse warehouse    # reuse one

Prints a Markdown table and writes it to ``bench/out/tokens.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # relative paths in conf (data/online_retail) resolve from the repo root
# Python UDFs run in worker processes: this interpreter (with pandas, pyarrow) runs them.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

OUTPUT_TOKENS_PER_ITEM = 60


def build_warehouse(spark, conf) -> None:
    from jobs import aggregate, ingest, items

    for stage in (ingest, items, aggregate):
        started = time.perf_counter()
        stage.run(spark, conf)
        print(f"[warehouse] {stage.__name__} done in {time.perf_counter() - started:.1f}s", flush=True)


def measure(spark, conf, run_date: dt.date, n_users: int) -> dict:
    from pyspark.sql import functions as F

    from core import tables
    from core.categories import load_rules
    from jobs import compress as cj
    from prompts import load_prompt
    from udfs.agents import behavior_compression as bc
    from udfs.agents import item_profile as ip
    from udfs.llm.agent import estimate_tokens

    cc = conf.compress
    weeks = cj.window_weeks(run_date, cc.weeks)
    week_category = tables.read(spark, conf, "silver.user_week_category").transform(
        cj.in_window(run_date, cc.weeks, "week_start")
    )
    chosen = (
        week_category.select("user_id")
        .distinct()
        .orderBy(F.xxhash64("user_id"), "user_id")
        .limit(n_users)
        .persist()
    )
    n_active = week_category.select("user_id").distinct().count()
    profiles = tables.read(spark, conf, "silver.item_profiles")
    events = cj.behaviour_events(
        tables.read(spark, conf, "bronze.events")
        .transform(cj.in_window(run_date, cc.weeks))
        .join(chosen, "user_id", "left_semi"),
        tables.read(spark, conf, "silver.item_categories"),
        profiles,
        load_rules(conf.aggregate.category_rules),
    ).persist()
    exact = cj.exact_rows(
        week_category.join(chosen, "user_id", "left_semi"), cj.factor_counts(events, cc.max_factors_per_row)
    )
    raw = cj.raw_texts(events, cc.max_raw_lines)
    inputs = cj.agent_inputs(exact, raw, [label for _, label in weeks])
    hybrid = cj.hybrid_digests(exact, raw, run_date, cc.weeks).select(
        "user_id", "digest_tokens", "digest_rows"
    )
    users = inputs.join(hybrid, "user_id").drop("exact_rows").collect()

    prompt = load_prompt(bc.AGENT.name)
    context = bc.context(conf.aggregate.category_rules, cc.max_factors_per_row)
    per_user = []
    for u in users:
        row = u.asDict()
        prompt_tokens = estimate_tokens(bc.AGENT.messages(prompt, row, context))
        answer = bc.heuristic(row, context).model_dump_json()
        per_user.append(
            {
                "raw": row["raw_tokens"],
                "digest": row["digest_tokens"],
                "prompt": prompt_tokens,
                "json_answer": estimate_tokens([{"content": answer}]),
                "digest_rows": len(row["digest_rows"]),
                "events": sum(1 for line in row["raw_text"].splitlines() if line[:1].isdigit()),
                "truncated": row["raw_text"].startswith("("),
            }
        )

    # hybrid: the item_profile prompt of every item the chosen users touched, and two
    # wider views of the same cost (see the notes of the report).
    ip_prompt = load_prompt(ip.AGENT.name)
    ip_context = ip.context(conf.aggregate.category_rules)
    item_cols = ["item_id", "title", "price", "price_band", "leaf_category", "image_url"]

    def item_tokens(item_ids) -> list[int]:
        rows = profiles.join(item_ids, "item_id", "left_semi").select(*item_cols).collect()
        return [estimate_tokens(ip.AGENT.messages(ip_prompt, r.asDict(), ip_context)) for r in rows]

    window_events = tables.read(spark, conf, "bronze.events").transform(cj.in_window(run_date, cc.weeks))
    touched = events.filter(F.col("item_id").isNotNull()).select("item_id").distinct()
    touched_all = window_events.filter(F.col("item_id").isNotNull()).select("item_id").distinct()
    week_start = weeks[-1][0] - dt.timedelta(days=7)
    new_items = (
        tables.read(spark, conf, "bronze.items")
        .filter((F.to_date("first_seen") > F.lit(week_start)) & (F.to_date("first_seen") <= F.lit(run_date)))
        .select("item_id")
    )
    item_prompt_tokens = item_tokens(touched)
    all_tokens = item_tokens(touched_all)
    new_tokens = item_tokens(new_items)
    events.unpersist()
    chosen.unpersist()
    return {
        "per_user": per_user,
        "n_active": n_active,
        "items": len(item_prompt_tokens),
        "item_prompt_tokens": item_prompt_tokens,
        "items_all": len(all_tokens),
        "item_tokens_all": sum(all_tokens),
        "items_new": len(new_tokens),
        "item_tokens_new": sum(new_tokens),
        "weeks": (weeks[0][1], weeks[-1][1]),
    }


def report(m: dict, run_date: dt.date, seconds: float) -> str:
    pu = m["per_user"]
    n = len(pu)
    med = {
        k: statistics.median(u[k] for u in pu)
        for k in ("raw", "digest", "prompt", "json_answer", "digest_rows")
    }
    total_raw, total_digest = sum(u["raw"] for u in pu), sum(u["digest"] for u in pu)
    llm_per_user = [u["prompt"] + u["digest"] for u in pu]
    items_total = sum(m["item_prompt_tokens"]) + OUTPUT_TOKENS_PER_ITEM * m["items"]
    hybrid_per_user = items_total / n
    llm_mean = statistics.mean(llm_per_user)
    all_per_user = (m["item_tokens_all"] + OUTPUT_TOKENS_PER_ITEM * m["items_all"]) / m["n_active"]
    new_per_user = (m["item_tokens_new"] + OUTPUT_TOKENS_PER_ITEM * m["items_new"]) / m["n_active"]
    llm_median = statistics.median(llm_per_user)
    ratio = med["raw"] / med["digest"]
    llm_ratio = llm_mean / hybrid_per_user
    truncated = sum(u["truncated"] for u in pu)
    lines = [
        f"{m['dataset']}, run date {run_date}, window {m['weeks'][0]}..{m['weeks'][1]}: "
        f"{n} of {m['n_active']:,} active users (deterministic: ordered by xxhash64(user_id)); "
        f"tokens estimated as characters / 4; {seconds:.0f}s.",
        "",
        "| measure | per user (median) | total over users |",
        "|---|--:|--:|",
        f"| raw behaviour text, tokens | {med['raw']:,.0f} | {total_raw:,} |",
        f"| digest text, tokens | {med['digest']:,.0f} | {total_digest:,} |",
        f"| **raw / digest** | **{ratio:.1f}x** | {total_raw / total_digest:.1f}x |",
        f"| digest rows (week x category) | {med['digest_rows']:,.0f} | {sum(u['digest_rows'] for u in pu):,} |",
        f"| event lines in the raw text | {statistics.median(u['events'] for u in pu):,.0f} | "
        f"{sum(u['events'] for u in pu):,} |",
        "",
        "| LLM tokens per user per run | tokens |",
        "|---|--:|",
        f"| `llm` mode: rendered behavior_compression prompt (median) | {med['prompt']:,.0f} |",
        f"| `llm` mode: + expected output ≈ digest tokens, median / mean | {llm_median:,.0f} / {llm_mean:,.0f} |",
        f"| `hybrid` mode: item_profile prompts of the {m['items']:,} items touched "
        f"+ {OUTPUT_TOKENS_PER_ITEM} output each, / {n} users | {hybrid_per_user:,.0f} |",
        f"| **`llm` (mean) / `hybrid`** | **{llm_ratio:.1f}x** |",
        f"| `hybrid`, items shared by all active users: the {m['items_all']:,} items touched by the "
        f"{m['n_active']:,} active users / {m['n_active']:,} | {all_per_user:,.0f} ({llm_mean / all_per_user:.1f}x) |",
        f"| `hybrid`, a weekly run: profiles of the {m['items_new']:,} items first seen in the last 7 days "
        f"/ {m['n_active']:,} active users | {new_per_user:,.1f} ({llm_mean / max(new_per_user, 1e-9):,.0f}x) |",
        "",
        f"- Targets: raw / digest ≥ 10x: {'met' if ratio >= 10 else 'NOT met'}; "
        f"`llm` / `hybrid` LLM tokens ≥ 10x: {'met' if llm_ratio >= 10 else 'NOT met'}.",
        f"- A digest row replaces the event lines of one week and category: here "
        f"{sum(u['events'] for u in pu) / sum(u['digest_rows'] for u in pu):.1f} lines a row on average "
        "(Online Retail has invoice lines only: no views, clicks or searches), so raw / digest stays near "
        "the tokens of that many lines over one row's.",
        f"- The `llm` answer is JSON, longer than the digest text: the heuristic twin's JSON answer "
        f"is {med['json_answer']:,.0f} tokens (median) against {med['digest']:,.0f} for the digest.",
        f"- {truncated} of {n} raw texts hit the {400}-line cap (their raw tokens are the capped text's).",
        "- `hybrid` counts every touched item's profile as if computed in this run; profiles are "
        "incremental (an unchanged item is not profiled again), so a later run costs less.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warehouse", help="reuse this warehouse (storage.root) instead of building one")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--run-date", default="2011-12-09")
    parser.add_argument(
        "--dataset",
        choices=["online_retail", "taobao"],
        default="online_retail",
        help="online_retail (bundled, invoice lines only) or taobao (../shared/data/taobao_userbehavior: "
        "views, favourites, carts, purchases; use --run-date 2017-12-03)",
    )
    parser.add_argument("--out", default=None, help="default bench/out/tokens[_DATASET].md")
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "" if args.dataset == "online_retail" else f"_{args.dataset}"
        args.out = str(ROOT / "bench" / "out" / f"tokens{suffix}.md")

    from core.config import load_config
    from core.session import get_spark

    run_date = dt.date.fromisoformat(args.run_date)
    tmp = None
    root = args.warehouse
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_tokens_")
        root = str(Path(tmp.name) / "warehouse")
    extra = []
    if args.dataset == "taobao":
        path = ROOT.parent / "shared" / "data" / "taobao_userbehavior" / "UserBehavior.csv"
        if not path.exists():
            parser.error(f"{path} not found: the taobao dataset lives in ../shared/data/")
        source = {
            "name": "taobao",
            "format": "taobao_userbehavior",
            "path": str(path),
            "timezone": "Asia/Shanghai",
        }
        extra.append(f"ingest.sources=[{json.dumps(source)}]")
    conf = load_config(
        overrides=extra
        + [
            f"storage.root={root}",
            f"run.date={run_date}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=4",
            "spark.driver_memory=3g",
        ]
    )
    spark = get_spark(conf)
    started = time.perf_counter()
    if args.warehouse is None:
        build_warehouse(spark, conf)
    m = measure(spark, conf, run_date, args.users)
    m["dataset"] = {"online_retail": "Online Retail", "taobao": "Taobao UserBehavior"}[args.dataset]
    text = report(m, run_date, time.perf_counter() - started)
    print(text, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Tokens: raw behaviour vs digest\n\n" + text)
    print(f"written to {out}", flush=True)
    spark.stop()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
