#!/usr/bin/env bash
# One device window of a results table (issue 27; docs/gpu.md#tables): one reproduce.py call
# under `timeout` that trains whole runs until its deadline, resuming where the committed
# results/runs stop, and brings back the small files of what it trained.
#
#   TABLE=cifar100_lt_if100_r32 SEEDS=0 PRIORITY=kd,bkd,ltkd COMMIT=<sha> bash scripts/gpu_tables.sh
#   SHORT=1 ONLY=kd TABLE=cifar100_lt_if100_r32 OUT=/tmp/out bash scripts/gpu_tables.sh   # CPU
#
# OUT gets runs.tar.gz, window.json and reproduce.log; here, `python scripts/gpu_tables.py
# import OUT` puts the finished runs into results/runs/ and rewrites results/TABLE.md.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
TABLE=${TABLE:?set TABLE, e.g. cifar100_lt_if100_r32}
SEEDS=${SEEDS:-0}
PRIORITY=${PRIORITY:-}
ONLY=${ONLY:-}
SHORT=${SHORT:-0}
ROOT=${ROOT:-results/runs}     # the same string in every window and at import (configs hold it)
WINDOW_S=${WINDOW_S:-530}      # reproduce.py's hard stop
DEADLINE_S=${DEADLINE_S:-$(( WINDOW_S - 30 ))}  # no run is started that is predicted to end later
DETERMINISTIC=${DETERMINISTIC:-1}  # XLA's deterministic GPU ops: a retrained teacher is the same
OUT=${OUT:-$PWD/gpu_out}
WORK=${WORK:-/tmp/ltkd_gpu_tables}
case $TABLE in
  cifar10_*) ZIP=${ZIP:-.gpu/cifar10-lt100.zip} ;;
  *) ZIP=${ZIP:-.gpu/cifar100-lt100.zip} ;;
esac
START=$(date +%s)
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT" || exit 2
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 3
export TFDS_DATA_DIR=$WORK/tfds  # prepared data outside the run configs
export LTKD_JAX_COMMIT=$COMMIT   # reproduce.py's record of the commit (no .git there)
if [[ $DETERMINISTIC == 1 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
fi
ARGS=(--table="$TABLE" --seeds="$SEEDS" --root="$ROOT" --archive="$ZIP"
      --set=data.imbalance_factor=1 --set=progress_bar=False --deadline_s="$DEADLINE_S"
      --out="$WORK/tables")
[[ $SHORT == 1 ]] && ARGS+=(--short)
[[ -n $ONLY ]] && ARGS+=(--only="$ONLY")
[[ -n $PRIORITY ]] && ARGS+=(--priority="$PRIORITY")
read -r -a EXTRA <<<"${EXTRA_ARGS:-}"  # more reproduce.py flags, e.g. --short_steps=5 on a CPU
ARGS+=("${EXTRA[@]}")
FLAGS=(--table="$TABLE" --seeds="$SEEDS" --root="$ROOT" --set_aside="$WORK/set_aside")
[[ $SHORT == 1 ]] && FLAGS+=(--short)

"$PY" scripts/gpu_tables.py prepare "${FLAGS[@]}" --only="$ONLY" || exit 4
echo "[gpu_tables] $(date +%H:%M:%S) reproduce.py ${ARGS[*]} (timeout ${WINDOW_S}s)"
timeout -k 20 "$WINDOW_S" "$PY" scripts/reproduce.py "${ARGS[@]}" 2>&1 \
  | grep --line-buffered -v -e '^I[0-9]\{4\} ' -e '^W[0-9]\{4\} .*\(orbax\|grain\)' | tee "$WORK/reproduce.log"
echo "[gpu_tables] reproduce.py exit ${PIPESTATUS[0]} after $(( $(date +%s) - START ))s"
"$PY" scripts/gpu_tables.py pack "${FLAGS[@]}" --since="$START" --out="$OUT" \
  --reproduce_args="${ARGS[*]}" --log="$WORK/reproduce.log" --commit="$COMMIT"
ls -la "$OUT"
