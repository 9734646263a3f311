#!/usr/bin/env bash
# One launcher for the discovery jobs on any Spark master: local, standalone, YARN, Kubernetes.
# Run ./spark-submit.sh --help for usage.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ZIP="$REPO/dist/discovery-code.zip"
APP="$REPO/jobs/cli.py"

usage() {
  cat <<EOF
Usage: ./spark-submit.sh [launcher options] [-- spark-submit args] <subcommand> [CLI args]

Runs a 'discovery' CLI subcommand through spark-submit, on any master. The application file
is jobs/cli.py; the code (core/, jobs/, udfs/, prompts/, conf/) is zipped into
dist/discovery-code.zip on every launch and shipped with --py-files; Delta Lake is added
with --packages io.delta:delta-spark_2.13:<installed delta-spark version>.

Launcher options (before the subcommand):
  --master URL            local[N] | spark://host:7077 | yarn | k8s://https://host:443
                          (default: spark.master of the config, i.e. conf/local.yaml's local[*],
                          or whatever --conf-file / --set spark.master=... give)
  --deploy-mode MODE      client (default) | cluster. Standalone masters do not run Python
                          apps in cluster mode (a Spark limitation); use it on YARN / Kubernetes.
  --conf-file FILE        YAML profile for the CLI (passed on as: <subcommand> --conf FILE).
                          In cluster deploy mode the driver runs remotely: name a profile
                          shipped in conf/ (--conf-file cluster.yaml), which travels in the zip.
  --spark-conf K=V        one Spark setting (spark-submit --conf K=V); repeatable
  -- ARGS...              raw spark-submit arguments (--num-executors 4, --executor-memory 2g,
                          --archives ..., ...), up to the first word that is a subcommand
  -h, --help              this text

Subcommand and CLI args: everything from the subcommand on goes to the discovery CLI
unchanged: pipeline [--only STAGE...] [--restart], any single stage (ingest, items, aggregate,
..., rank, evaluate), generate --users N --days N --out DIR, each with [--conf FILE]
[--set key=value ...] [--run-date YYYY-MM-DD]. Run
'./spark-submit.sh <subcommand> --help' for a subcommand's own options.

Spark settings taken from the config (conf file + --set), since under spark-submit the JVM
starts before the job reads its config: spark.master (unless --master), spark.app_name
(--name), spark.driver_memory (--driver-memory), spark.shuffle_partitions,
spark.log_level (spark.log.level) and every spark.extra key (--conf). Explicit
--spark-conf and '-- ARGS' come later on the command line and win.

Python: \$PYTHON, else $REPO/.venv/bin/python if it exists, else python3. On local[*] and
spark:// masters the same interpreter runs the driver and the executors (PYSPARK_PYTHON,
spark.pyspark.python), unless PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON are set already.
On YARN and Kubernetes the executors' Python is yours to provide (an image, or --archives
of a packed env plus --spark-conf spark.pyspark.python=./env/bin/python).

spark-submit: \$SPARK_HOME/bin/spark-submit if SPARK_HOME is set (it must be Spark 4.0.x,
like the installed pyspark), else the one inside the installed pyspark package.

Paths: relative paths in the config (storage.root "warehouse", the source path
"data/online_retail/by-day") resolve against the driver's working directory. That is fine
for local mode and for a standalone cluster on this one machine. On a real cluster every
executor must see the same storage, so set storage.root (and source paths) to a shared URI:
  --set storage.root=s3a://bucket/discovery   (or hdfs:///..., abfss://..., gs://...)

Examples:
  ./spark-submit.sh pipeline                                   # local[*], ./warehouse
  ./spark-submit.sh --master 'local[4]' aggregate --set aggregate.horizon_days=180
  ./spark-submit.sh --master spark://127.0.0.1:7077 aggregate --set storage.root=/tmp/wh
  ./spark-submit.sh --master spark://host:7077 --spark-conf spark.executor.memory=4g \\
      -- --total-executor-cores 16 pipeline --set storage.root=hdfs:///discovery
  ./spark-submit.sh --master yarn --deploy-mode cluster --conf-file conf/cluster.yaml \\
      -- --num-executors 10 --archives env.tar.gz#env \\
      pipeline --set storage.root=s3a://bucket/discovery
  ./spark-submit.sh --master k8s://https://k8s-api:6443 --deploy-mode cluster \\
      --spark-conf spark.kubernetes.container.image=registry/discovery:0.1.0 \\
      --spark-conf spark.kubernetes.file.upload.path=s3a://bucket/spark-upload \\
      ingest --set storage.root=s3a://bucket/discovery
  ./spark-submit.sh generate --users 1000 --days 30 --out /tmp/synthetic

The zip is rebuilt on every launch (an atomic replace). Executors fetch it from the driver
when they start, so do not delete dist/ (make clean) while a job runs.

Environment: PYTHON, SPARK_HOME, PYSPARK_PYTHON, PYSPARK_DRIVER_PYTHON (see above);
DISCOVERY_DRY_RUN=1 prints the spark-submit command instead of running it.
EOF
}

die() { echo "spark-submit.sh: $*" >&2; exit 2; }

# --- Python -------------------------------------------------------------------------------
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
  PY="$REPO/.venv/bin/python"
else
  PY="python3"
fi
# An absolute path (executors do not share our PATH); keep venv symlinks as they are.
if [[ "$PY" != */* ]]; then
  PY="$(command -v "$PY")" || die "python not found: ${PYTHON:-python3}"
elif [[ "$PY" != /* ]]; then
  PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
fi
[[ -x "$PY" ]] || die "python not executable: $PY"

subcommands() {
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c '
import argparse
from jobs.cli import build_parser
for a in build_parser()._actions:
    if isinstance(a, argparse._SubParsersAction):
        print(" ".join(a.choices))'
}

# --- launcher arguments -------------------------------------------------------------------
MASTER=""
DEPLOY_MODE=""
CONF_FILE=""
SPARK_CONFS=()
EXTRA=()
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --master) need "$@"; MASTER="$2"; shift 2 ;;
    --master=*) MASTER="${1#*=}"; shift ;;
    --deploy-mode) need "$@"; DEPLOY_MODE="$2"; shift 2 ;;
    --deploy-mode=*) DEPLOY_MODE="${1#*=}"; shift ;;
    --conf-file) need "$@"; CONF_FILE="$2"; shift 2 ;;
    --conf-file=*) CONF_FILE="${1#*=}"; shift ;;
    --spark-conf) need "$@"; [[ "$2" == *=* ]] || die "--spark-conf expects KEY=VALUE, got '$2'"
                  SPARK_CONFS+=(--conf "$2"); shift 2 ;;
    --spark-conf=*) v="${1#*=}"; [[ "$v" == *=* ]] || die "--spark-conf expects KEY=VALUE, got '$v'"
                    SPARK_CONFS+=(--conf "$v"); shift ;;
    --)
      shift
      known="$(subcommands)" || die "cannot list the discovery subcommands with $PY"
      read -r -a KNOWN <<<"$known"
      while (($#)); do
        for s in "${KNOWN[@]}"; do [[ "$1" == "$s" ]] && break 2; done
        EXTRA+=("$1"); shift
      done
      ;;
    -*) die "unknown launcher option '$1' (spark-submit options go after '--'; see --help)" ;;
    *) break ;;
  esac
done
(($#)) || die "no subcommand given (pipeline, ingest, aggregate, generate, ...; see --help)"
case "$DEPLOY_MODE" in ""|client|cluster) ;; *) die "--deploy-mode must be client or cluster" ;; esac
SUB="$1"; shift
CLI_ARGS=("$SUB")
[[ -n "$CONF_FILE" ]] && CLI_ARGS+=(--conf "$CONF_FILE")
CLI_ARGS+=("$@")

# --- config -> spark-submit settings (also validates the CLI args and config up front) -----
# Writes NUL-separated to a file: master, delta-spark version, then spark-submit arguments.
# Exit 10: the CLI printed its --help.
SETTINGS="$(mktemp)"
trap 'rm -f "$SETTINGS"' EXIT
rc=0
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$SETTINGS" "${CLI_ARGS[@]}" <<'PY' || rc=$?
import contextlib
import sys
from importlib.metadata import version

from jobs.cli import build_parser
from core.config import ConfigError, load_config

out_file, argv = sys.argv[1], sys.argv[2:]
try:
    with contextlib.redirect_stdout(sys.stderr):
        args = build_parser().parse_args(argv)
except SystemExit as e:
    sys.exit(10 if e.code in (0, None) else 2)
overrides = list(args.overrides) + ([f"run.date={args.run_date}"] if args.run_date else [])
try:
    conf = load_config(args.conf, overrides)
except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
sc = conf.spark
out = [sc.master, version("delta-spark"), "--name", sc.app_name, "--driver-memory", sc.driver_memory,
       "--conf", f"spark.sql.shuffle.partitions={sc.shuffle_partitions}",
       "--conf", f"spark.log.level={sc.log_level}"]
for k, v in sc.extra.items():
    out += ["--conf", f"{k}={v}"]
with open(out_file, "w", encoding="utf-8") as fh:
    fh.write("".join(f"{x}\0" for x in out))
PY
[[ $rc -eq 10 ]] && exit 0
[[ $rc -eq 0 ]] || exit "$rc"
mapfile -d '' -t FROM_CONF <"$SETTINGS"
rm -f "$SETTINGS"; trap - EXIT
CONF_MASTER="${FROM_CONF[0]}"
DELTA_VERSION="${FROM_CONF[1]}"
FROM_CONF=("${FROM_CONF[@]:2}")
MASTER="${MASTER:-$CONF_MASTER}"

# --- spark-submit -------------------------------------------------------------------------
if [[ -n "${SPARK_HOME:-}" ]]; then
  SPARK_SUBMIT="$SPARK_HOME/bin/spark-submit"
  if ls "$SPARK_HOME"/jars/spark-core_*.jar >/dev/null 2>&1 && ! ls "$SPARK_HOME"/jars/spark-core_2.13-4.0.*.jar >/dev/null 2>&1; then
    echo "spark-submit.sh: warning: SPARK_HOME=$SPARK_HOME is not Spark 4.0.x; delta-spark $DELTA_VERSION needs Spark 4.0" >&2
  fi
else
  PYSPARK_DIR="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
    || die "pyspark is not installed for $PY (or set SPARK_HOME)"
  SPARK_SUBMIT="$PYSPARK_DIR/bin/spark-submit"
fi
[[ -x "$SPARK_SUBMIT" ]] || die "spark-submit not found at $SPARK_SUBMIT"

# --- code zip for the executors (and the driver) ------------------------------------------
mkdir -p "$REPO/dist"
"$PY" - "$REPO" "$ZIP" <<'PY'
import os
import sys
import zipfile

repo, out = sys.argv[1], sys.argv[2]
tmp = f"{out}.{os.getpid()}.tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for pkg in ("core", "jobs", "udfs", "prompts", "conf"):
        top = os.path.join(repo, pkg)
        if not os.path.isfile(os.path.join(top, "__init__.py")):
            sys.exit(f"spark-submit.sh: {top} is not a package")
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for f in sorted(files):
                if f.startswith(".") or f.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(root, f)
                z.write(path, os.path.relpath(path, repo))
os.replace(tmp, out)  # atomic: a concurrent launch never ships a half-written zip
PY

# --- Python for driver and executors ------------------------------------------------------
PY_CONFS=()
case "$MASTER" in
  local*|spark://*)
    # One machine (or identical machines): the same interpreter everywhere.
    export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
    export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}"
    PY_CONFS=(--conf "spark.pyspark.python=$PYSPARK_PYTHON")
    ;;
  *)
    # YARN / Kubernetes: a local interpreter path means nothing on the cluster's nodes.
    if [[ "${DEPLOY_MODE:-client}" == client ]]; then
      export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"
    fi
    ;;
esac

CMD=("$SPARK_SUBMIT" --master "$MASTER")
[[ -n "$DEPLOY_MODE" ]] && CMD+=(--deploy-mode "$DEPLOY_MODE")
CMD+=(
  "${FROM_CONF[@]}"
  --packages "io.delta:delta-spark_2.13:$DELTA_VERSION"
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog
  --conf spark.sql.session.timeZone=UTC
  "${PY_CONFS[@]}"
  --py-files "$ZIP"
  "${SPARK_CONFS[@]}"
  "${EXTRA[@]}"
  "$APP"
  "${CLI_ARGS[@]}"
)
echo "spark-submit.sh: $(printf '%q ' "${CMD[@]}")" >&2
if [[ -n "${DISCOVERY_DRY_RUN:-}" ]]; then
  exit 0
fi
exec "${CMD[@]}"
