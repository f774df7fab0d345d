#!/usr/bin/env bash
# The GPU suite as one command for a GPU machine, and the three files it leaves.
#
#   bash benchmarks/gpu_suite.sh             # on the GPU machine: ~8 minutes, from the repository root
#   bash benchmarks/gpu_suite.sh --dry-run   # anywhere: the same stages on the CPU, ~2 minutes
#
# Arguments go to benchmarks/gpu_suite.py (--dry-run, --only STAGE,..., --budget-s S).
# The repository is not pip-installed there: it runs from the checkout with
# PYTHONPATH=<site>:<checkout>. Packages missing there (simpy; xxhash is carried
# too) come as wheels in .whl/, fetched beforehand by benchmarks/fetch_wheels.sh;
# they are installed only when `import simpy, xxhash` fails.
#
# Writes into $OUT (./gpu-suite-out when OUT is unset), three files:
#   measured.tar.gz  the suite's traces/measured/ (run directories, logs/, the summary,
#                    gpu-suite.json); unpack with: tar -xzf measured.tar.gz -C traces/measured
#                    Kept under 15 MiB: the largest trace.perfetto.json files are dropped
#                    first if needed (listed in DROPPED_PERFETTO.txt; they can be rebuilt
#                    from trace/spans.parquet with traces.perfetto.export_chrome_trace).
#   summary.md       every figure of every stage
#   suite.log        everything the suite printed
# The suite works in $SUITE_DIR (default /tmp/suite). Exit status: the suite's
# (0 all stages passed or skipped, 1 a stage failed, 2 no CUDA without --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/gpu-suite-out}"
PYTHON="${PYTHON:-python3}"
SUITE_DIR="${SUITE_DIR:-/tmp/suite}"
SITE="${SITE:-/tmp/site}"
LIMIT_BYTES=$((15 * 1024 * 1024)) # small enough to copy back from a remote machine
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if "$PYTHON" -c "import simpy, xxhash" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:$PWD"
else
    echo "gpu_suite.sh: simpy or xxhash cannot be imported and .whl/ holds no wheels" \
        "(run benchmarks/fetch_wheels.sh first)" >&2
    exit 2
fi

rm -rf "${SUITE_DIR:?}/traces/measured" "$SUITE_DIR/summary.md"
set +e
"$PYTHON" benchmarks/gpu_suite.py --out "$SUITE_DIR" "$@" 2>&1 | tee "$OUT/suite.log"
status=$?
set -e

measured="$SUITE_DIR/traces/measured"
if [ -d "$measured" ]; then
    tar -czf "$OUT/measured.tar.gz" -C "$measured" .
    while [ "$(stat -c %s "$OUT/measured.tar.gz")" -gt "$LIMIT_BYTES" ]; do
        biggest=$(find "$measured" -name trace.perfetto.json -printf '%s %p\n' |
            sort -n | tail -n 1 | cut -d' ' -f2-)
        if [ -z "$biggest" ]; then
            echo "gpu_suite.sh: measured.tar.gz is over the limit with no Perfetto file left" >&2
            break
        fi
        echo "gpu_suite.sh: dropping ${biggest#"$measured"/} to stay under the size limit"
        echo "${biggest#"$measured"/}" >>"$measured/DROPPED_PERFETTO.txt"
        rm -f "$biggest"
        tar -czf "$OUT/measured.tar.gz" -C "$measured" .
    done
    echo "gpu_suite.sh: $OUT/measured.tar.gz, $(stat -c %s "$OUT/measured.tar.gz") bytes"
fi
if [ -f "$SUITE_DIR/summary.md" ]; then
    cp "$SUITE_DIR/summary.md" "$OUT/summary.md"
fi
exit "$status"
