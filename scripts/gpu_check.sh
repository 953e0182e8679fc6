#!/usr/bin/env bash
# Issue 26's GPU check in one time-boxed script (docs/gpu.md has the `run` call):
#   setup   carried packages (.gpu/site.tar.xz or .gpu/whl) when grain / tfds are missing
#   env     GPU, driver, CUDA, JAX / jaxlib / torch versions, commit -> env.json
#   prep    the one-off data preparation of the CIFAR-100-LT zip (not part of the job's time)
#   bench   scripts/benchmark.py --loop: pure step, in-loop and PyTorch (on CUDA) images/s
#   main    python -m ltkd_jax.main --config configs/bkd_cifar.py: teacher + student, 200 + 200
#   profile a jax.profiler trace of one epoch, when a target is missed (PROFILE=auto)
#   bf16    the main job again with --config.model.dtype=bfloat16, if the time left allows
# nvidia-smi samples utilisation every second throughout. Every phase runs under `timeout`
# (its cap, or what is left of BUDGET_S); the small files (logs, metrics.jsonl, summary.json,
# phases.jsonl, env.json, bench.json, smi.csv, never checkpoints) are packed into
# $OUT/gpu_check.tar.gz after every phase, with env.json, timings.json (the numbers),
# gpu_main_job.md (the report, scripts/gpu_results.py) and gpu_check.log beside it.
#
#   COMMIT=<sha> bash scripts/gpu_check.sh             # on the GPU machine, in the repo root
#   TINY=1 OUT=/tmp/gpu_out bash scripts/gpu_check.sh  # every phase with a few steps (CPU)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
TINY=${TINY:-0}
OUT=${OUT:-$REPO/gpu_out}
WORK=${WORK:-/tmp/ltkd_gpu_check}
ZIP=${ZIP:-.gpu/cifar100-lt100.zip}
BUDGET_S=${BUDGET_S:-545}    # the whole script; the `run` call's timeout_s=600 leaves room above it
RESERVE_S=${RESERVE_S:-25}   # kept back from every phase for the report and the packing
PHASES=${PHASES:-bench,main,bf16}
PROFILE=${PROFILE:-auto}     # auto: when a target is missed; 1: always; 0: never
if [[ $TINY == 1 ]]; then
  BUDGET_S=${TINY_BUDGET_S:-3000}
  [[ $PROFILE == auto ]] && PROFILE=1  # exercise the profile phase too
  MAIN_ARGS=(--config.num_epochs=1 --config.teacher.num_epochs=1 --config.max_steps_per_epoch=5)
  PROFILE_ARGS=(--config.max_steps_per_epoch=3)
  BENCH_ARGS=(--repeats=1 --loop_steps=3 --steps=2)
  CAP_BENCH=900 CAP_MAIN=900 CAP_PROFILE=600
else
  MAIN_ARGS=()
  PROFILE_ARGS=()
  BENCH_ARGS=(--repeats=2 --loop_steps=84 --steps=100 --torch_workers=4)
  CAP_BENCH=${CAP_BENCH:-160} CAP_MAIN=${CAP_MAIN:-290} CAP_PROFILE=${CAP_PROFILE:-70}
fi
BENCH_FEEDS=${BENCH_FEEDS:-resident}  # resident,grain adds the grain-fed loop (about 2x time)

START=$(date +%s)
STAGE=$WORK/out
rm -rf "$WORK" && mkdir -p "$STAGE" "$OUT" || exit 2
exec > >(tee -a "$STAGE/gpu_check.log") 2>&1
note() { echo "[gpu_check $(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
now_local() { date +%Y-%m-%dT%H:%M:%S.%N; }

# phase NAME CAP LOG CMD...: CMD under timeout min(CAP, time left - RESERVE_S), output to LOG;
# one line in phases.jsonl. Returns CMD's status (124: timed out, 125: no time was left).
phase() {
  local name=$1 cap=$2 log=$3; shift 3
  local limit=$(( $(left) - RESERVE_S ))
  (( cap < limit )) && limit=$cap
  if (( limit < 10 )); then
    note "$name: skipped, ${limit}s left"
    return 125
  fi
  note "$name: start (limit ${limit}s): $*"
  local t0 l0 t1 l1 rc
  t0=$(date +%s.%N); l0=$(now_local)
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N); l1=$(now_local)
  "$PY" scripts/gpu_results.py phase --file "$STAGE/phases.jsonl" --name "$name" \
    --start "$t0" --end "$t1" --start_local "$l0" --end_local "$l1" --rc "$rc" \
    --limit "$limit" -- "$@"
  note "$name: exit $rc after $(awk "BEGIN{printf \"%.0f\", $t1 - $t0}")s"
  tail -n 3 "$log"
  return $rc
}

# pack: the report and the tarball into OUT (after every phase, so a cut run still returns).
pack() {
  "$PY" scripts/gpu_results.py report "$STAGE" --md "$STAGE/gpu_main_job.md" \
    --json "$STAGE/timings.json" >/dev/null 2>>"$STAGE/report_errors.log" \
    || note "report failed (see report_errors.log)"
  tar czf "$OUT/gpu_check.tar.gz.tmp" -C "$STAGE" . && mv "$OUT/gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"
  for f in env.json timings.json gpu_main_job.md gpu_check.log; do
    [[ -f $STAGE/$f ]] && cp "$STAGE/$f" "$OUT/$f"
  done
}

# --- setup: the carried packages, only where the machine lacks them -----------------------
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 3
cat >"$STAGE/settings.json" <<EOF
{"tiny": $([[ $TINY == 1 ]] && echo true || echo false), "budget_s": $BUDGET_S, "phases": "$PHASES",
 "profile": "$PROFILE", "zip": "$ZIP", "bench_feeds": "$BENCH_FEEDS", "work": "$WORK"}
EOF

# --- env and the utilisation sampler --------------------------------------------------------
"$PY" scripts/gpu_results.py env --out "$STAGE/env.json" --commit "$COMMIT"
note "env: $(tr -d '\n' <"$STAGE/env.json" | head -c 600)"
SMI_PID=
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm \
    --format=csv,nounits -l 1 >"$STAGE/smi.csv" 2>&1 &
  SMI_PID=$!
else
  note "no nvidia-smi: no utilisation samples"
fi
trap '[[ -n $SMI_PID ]] && kill $SMI_PID 2>/dev/null' EXIT

DATA=(--config.data.archive="$ZIP" --config.data.imbalance_factor=1
      --config.data.data_dir="$WORK/tfds" --config.progress_bar=False)

# --- prep: the one-off data preparation (ArrayRecord + decoded arrays) ----------------------
phase prep 240 "$STAGE/prep.log" "$PY" -m ltkd_jax.data.prepare --config configs/bkd_cifar.py "${DATA[@]}"
pack

# --- bench -----------------------------------------------------------------------------------
if [[ ,$PHASES, == *,bench,* ]]; then
  # PyTorch shares the process: JAX must leave it GPU memory. A compile cache of its own
  # spares the repeats their recompiles (the main job below compiles cold).
  phase bench "$CAP_BENCH" "$STAGE/bench.log" env XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 \
    JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache_bench" "$PY" scripts/benchmark.py --loop \
    --cpu_kernels=auto --archive="$ZIP" --imbalance_factor=1 --data_dir="$WORK/tfds" \
    --loop_feeds="$BENCH_FEEDS" --json="$STAGE/bench.json" "${BENCH_ARGS[@]}"
  pack
fi

# main_job TAG [overrides]: the main job end to end; its small files into STAGE/TAG.
main_job() {
  local tag=$1; shift
  local wd=$WORK/runs/$tag dst=$STAGE/$tag rc
  mkdir -p "$dst"
  phase "$tag" "$CAP_MAIN" "$dst/stdout.log" "$PY" -m ltkd_jax.main --config configs/bkd_cifar.py \
    --workdir "$wd" "${DATA[@]}" "${MAIN_ARGS[@]}" "$@"
  rc=$?
  for f in run.log metrics.jsonl summary.json config.json invocations.jsonl; do
    [[ -f $wd/$f ]] && cp "$wd/$f" "$dst/$f"
  done
  for f in metrics.jsonl config.json summary.json; do
    [[ -f $wd/teacher/$f ]] && cp "$wd/teacher/$f" "$dst/teacher_$f"
  done
  pack
  return $rc
}

MAIN_S=0
if [[ ,$PHASES, == *,main,* ]]; then
  t=$(date +%s)
  main_job main_f32
  MAIN_RC=$?
  MAIN_S=$(( $(date +%s) - t ))
  # --- profile: one epoch of the student (or the teacher) under jax.profiler -------------
  missed=0
  "$PY" scripts/gpu_results.py check "$STAGE" || missed=1
  if [[ $PROFILE == 1 || ($PROFILE == auto && $missed == 1) ]]; then
    teacher=$WORK/runs/main_f32/teacher
    if [[ $MAIN_RC == 0 || -d $teacher/checkpoints ]] && [[ -f $teacher/task.json ]]; then
      what=(--config configs/bkd_cifar.py --config.teacher.workdir="$teacher"); run=student
    else
      what=(--config configs/ce_cifar.py); run=teacher
    fi
    # Two epochs; the trace runs from epoch 1's evaluation to epoch 2's (compile left out).
    phase profile "$CAP_PROFILE" "$STAGE/profile.log" "$PY" scripts/gpu_results.py profile \
      "$WORK/trace" -- "${what[@]}" --workdir "$WORK/runs/profile" "${DATA[@]}" \
      --config.num_epochs=2 --config.eval_every_epochs=1 "${PROFILE_ARGS[@]}"
    # The whole trace (xplane.pb for TensorBoard / xprof, trace.json.gz for Perfetto) if it
    # stays under the tool's 16 MiB a file, else the Perfetto file alone.
    kept="xplane.pb + trace.json.gz"
    (cd "$WORK" && tar czf "$OUT/profile.tar.gz" trace 2>/dev/null)
    size=$(du -k "$OUT/profile.tar.gz" 2>/dev/null | cut -f1)
    if [[ -z $size ]] || (( size > 15000 )); then
      kept="trace.json.gz only"
      (cd "$WORK" && find trace -name '*.trace.json.gz' | tar czf "$OUT/profile.tar.gz" -T - 2>/dev/null)
      size=$(du -k "$OUT/profile.tar.gz" 2>/dev/null | cut -f1)
    fi
    if [[ -z $size ]] || (( size > 15000 )); then
      rm -f "$OUT/profile.tar.gz"
      echo "Profile of a $run epoch: no trace came back (${size:-0} KiB compressed)." >"$STAGE/profile.txt"
    else
      echo "A jax.profiler trace of the second of two $run epochs (its training and evaluation; \
no Python tracer) came back as \`profile.tar.gz\` ($kept, ${size} KiB; not committed): open \
it with TensorBoard's profile plugin / xprof, or the .trace.json.gz in ui.perfetto.dev." >"$STAGE/profile.txt"
    fi
    pack
  fi
fi

# --- bf16, when the time left allows another main job ----------------------------------------
if [[ ,$PHASES, == *,bf16,* ]]; then
  need=$(( MAIN_S + RESERVE_S ))
  if [[ $TINY == 1 || ( $MAIN_S -gt 0 && ${MAIN_RC:-1} == 0 && $(left) -ge $need ) ]]; then
    main_job main_bf16 --config.model.dtype=bfloat16
  else
    note "bf16: skipped ($(left)s left, the float32 job took ${MAIN_S}s, exit ${MAIN_RC:-none})"
  fi
fi

[[ -n $SMI_PID ]] && kill "$SMI_PID" 2>/dev/null
SMI_PID=
pack
note "done in $(( $(date +%s) - START ))s; OUT=$OUT: $(ls "$OUT" | tr '\n' ' ')"
cat "$STAGE/gpu_main_job.md" 2>/dev/null
