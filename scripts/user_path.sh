#!/usr/bin/env bash
# A new user's path through the README, in order, with no traceback and no warning that the
# README does not explain (issue 24):
#
#     bash scripts/user_path.sh /tmp/user_path            # the README's commands as written
#     USER_PATH_QUICK=1 bash scripts/user_path.sh DIR     # shorter schedules (the slow test)
#
# 1. the quick-start, its report, then predict / evaluate / export on its student;
# 2. a generated long-tailed image folder (12 classes, 40 to 4 training images, 40x44 JPEGs):
#    the smoke run, the CE teacher, the BKD student, evaluate on the zip, predict, export,
#    compare.py; the same folder changed by one image is refused by the finished run;
# 3. the mistakes the README promises one line and exit 2 for.
#
# Runs from the checkout's root in the current environment (README "Set up"); writes only
# under DIR (TFDS_DATA_DIR=DIR/tensorflow_datasets). Each command's output is kept in
# DIR/logs/. Exits 1 at the first command that fails its check.
set -u
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${1:?usage: bash scripts/user_path.sh DIR}")
mkdir -p "$DIR/logs"
export TFDS_DATA_DIR="$DIR/tensorflow_datasets"
QUICK=${USER_PATH_QUICK:-0}

# Warnings a user meets on this path that the README or the log line itself explains.
EXPLAINED='changed since it was prepared|warm-up is scaled down|no ONNX model written'
EXPLAINED+='|The test split is imbalanced'

step() {  # step NAME EXPECTED_RC COMMAND...: run, then check rc, tracebacks and warnings
  local name=$1 want=$2
  shift 2
  local start=$SECONDS
  "$@" >"$DIR/logs/$name.out" 2>"$DIR/logs/$name.err"
  local rc=$?
  local err="$DIR/logs/$name.err"
  if [[ $rc != "$want" ]]; then
    echo "FAILED $name: exit $rc, expected $want: $*"; tail -20 "$err"; exit 1
  fi
  if grep -q "Traceback" "$err"; then
    echo "FAILED $name: a traceback"; tail -30 "$err"; exit 1
  fi
  local warnings
  warnings=$(grep -E '^W[0-9]{4} |Warning:|WARNING' "$err" | grep -vE "$EXPLAINED")
  if [[ -n $warnings ]]; then
    echo "FAILED $name: unexplained warnings:"; echo "$warnings" | cut -c1-300; exit 1
  fi
  if [[ $want == 2 ]]; then  # a usage error: one message after the log lines, "error: ..."
    local message
    message=$(grep -vE '^[IWE][0-9]{4} ' "$err")
    if [[ $message != error:* ]] || (($(wc -l <<<"$message") > 3)); then
      echo "FAILED $name: not one error message:"; cat "$err"; exit 1
    fi
  fi
  echo "ok $name ($((SECONDS - start)) s)"
}

expect() {  # expect NAME TEXT FILE: FILE holds TEXT
  if ! grep -qF -- "$2" "$3"; then echo "FAILED $1: no '$2' in $3"; tail -20 "$3"; exit 1; fi
}

short=()         # quick-start schedule
folder_short=()  # folder runs: a few steps of a small model
methods=kd,bkd
if [[ $QUICK == 1 ]]; then  # the same commands, shorter; steps another one covers are skipped
  short=(--config.num_epochs=3 --config.teacher.num_epochs=3 --config.eval_every_epochs=3)
  folder_short=(--config.num_epochs=2 --config.max_steps_per_epoch=2
    --config.model.name=resnet8 --config.teacher.model=resnet8)
  methods=kd
fi
full() { [[ $QUICK != 1 ]]; }  # steps of the full walk only

# ---- 1. The quick-start and what to do next ----------------------------------------------
QS=$DIR/ltkd_quickstart
step quickstart 0 python -m ltkd_jax.main --config configs/quickstart.py --workdir "$QS" "${short[@]}"
expect quickstart "bkd        final" "$DIR/logs/quickstart.out"
for f in report/per_class.png report/confusion.png teacher/summary.json teacher/run.log; do
  [[ -s $QS/$f ]] || { echo "FAILED quickstart: no $QS/$f"; exit 1; }
done
step digits_images 0 python scripts/digits_images.py --workdir "$QS" --out "$DIR/digits_test"
step qs_predict 0 python -m ltkd_jax.predict --workdir "$QS" "$DIR/digits_test/3" --top_k=3
step qs_evaluate 0 python -m ltkd_jax.evaluate --workdir "$QS" --data="$DIR/digits_test"
expect qs_evaluate "groups: mean per-class accuracy" "$DIR/logs/qs_evaluate.out"
trained=$(grep "^bkd " "$DIR/logs/quickstart.out" | grep -oE 'top-1 +[0-9.]+%' | tr -s ' ')
expect qs_evaluate "$trained" "$DIR/logs/qs_evaluate.out"  # the trainer's own final top-1
step qs_export 0 python -m ltkd_jax.export --workdir "$QS" --out "$DIR/exported" --no-latency

# ---- 2. A user's own long-tailed folder ----------------------------------------------------
DATA=$DIR/mydata
python - "$DATA" <<'EOF'
import os, shutil, sys
import numpy as np
from PIL import Image

root = sys.argv[1]
rng = np.random.default_rng(0)
for c in range(12):  # 40 down to 4 training images: no class has 20, so groups are derived
    for split, n in (("train", round(40 * 0.1 ** (c / 11))), ("test", 4)):
        os.makedirs(f"{root}/{split}/class_{c:02d}", exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 90, (40, 44, 3)).astype(np.uint8)
            image[..., c % 3] += 40 + 12 * c
            Image.fromarray(image).save(f"{root}/{split}/class_{c:02d}/{i:03d}.jpg")
shutil.make_archive(root, "zip", root)
EOF
touch "$DATA/test/class_00/notes.txt"  # a non-image file predict leaves out and counts
R=$DIR/runs
full && step smoke 0 python -m ltkd_jax.main --config "configs/ce_folder.py:root=$DATA,epochs=1" \
  --workdir "$R/smoke"
step ce_mydata 0 python -m ltkd_jax.main --config configs/ce_folder.py --workdir "$R/ce_mydata" \
  --config.data.root="$DATA" "${folder_short[@]}"
expect ce_mydata "thresholds derived from the class counts" "$DIR/logs/ce_mydata.err"
expect ce_mydata "batches built on the device" "$DIR/logs/ce_mydata.err"
step bkd_mydata 0 python -m ltkd_jax.main --config configs/bkd_folder.py --workdir "$R/bkd_mydata" \
  --config.data.root="$DATA" --config.teacher.workdir="$R/ce_mydata" "${folder_short[@]}"
step evaluate_zip 0 python -m ltkd_jax.evaluate --workdir "$R/bkd_mydata" --data="$DATA.zip"
expect evaluate_zip "mean-class" "$DIR/logs/evaluate_zip.out"
step predict 0 python -m ltkd_jax.predict --workdir "$R/bkd_mydata" "$DATA/test/class_00"
expect predict "1 non-image files left out" "$DIR/logs/predict.err"
full && step export 0 python -m ltkd_jax.export --workdir "$R/bkd_mydata" \
  --out "$DIR/exported_bkd" --no-latency
step compare 0 python scripts/compare.py --config "configs/ce_folder.py:root=$DATA,epochs=2" \
  --teacher_workdir="$R/ce_mydata" --methods=$methods --root="$R/compare" "${folder_short[@]}"
expect compare "| kd |" "$DIR/logs/compare.out"
[[ -s $R/compare/compare.png ]] || { echo "FAILED compare: no $R/compare/compare.png"; exit 1; }
if (($(grep -cE "^(teacher |groups: )" "$DIR/logs/compare.out") > 0)); then
  echo "FAILED compare: the shared teacher or the groups note repeated per method"; exit 1
fi

# The folder changes: the finished run refuses it and keeps its task.json.
cp "$DATA/train/class_00/000.jpg" "$DATA/train/class_00/extra.jpg"
before=$(md5sum <"$R/ce_mydata/task.json")
step changed_data 2 python -m ltkd_jax.main --config configs/ce_folder.py \
  --workdir "$R/ce_mydata" --config.data.root="$DATA" "${folder_short[@]}"
expect changed_data "trained on other data" "$DIR/logs/changed_data.err"
[[ $(md5sum <"$R/ce_mydata/task.json") == "$before" ]] || { echo "FAILED: task.json changed"; exit 1; }

# ---- 3. Mistakes: one line, exit 2 ---------------------------------------------------------
W=$DIR/mistakes
step no_config_file 2 python -m ltkd_jax.main --config configs/nosuch.py --workdir "$W"
step config_arg_typo 2 python -m ltkd_jax.main --config configs/ce_cifar.py:datset=cifar10 \
  --workdir "$W"
expect config_arg_typo "key one of ['dataset'" "$DIR/logs/config_arg_typo.err"
step wrong_root 2 python -m ltkd_jax.main --config configs/ce_folder.py:root=/no/such/data \
  --workdir "$W"
expect wrong_root "config.data.root='/no/such/data'" "$DIR/logs/wrong_root.err"
step imb_on_long_tail 2 python -m ltkd_jax.main --config "configs/ce_folder.py:root=$DATA,imb=100" \
  --workdir "$W"
step evaluate_no_data 2 python -m ltkd_jax.evaluate --workdir "$R/bkd_mydata" --data=/nonexistent
step predict_no_run 2 python -m ltkd_jax.predict --workdir /no/such/run "$DATA/test"
step reproduce_no_archive 2 python scripts/reproduce.py --table=cifar100_lt_if100_r32 \
  --archive=/no/such.zip --root="$DIR/reproduce"
step reproduce_dry_run 0 python scripts/reproduce.py --table=cifar100_lt_if100_r32 \
  --archive=/no/such.zip --root="$DIR/reproduce" --dry_run
expect reproduce_dry_run "warning: --archive: /no/such.zip does not exist" \
  "$DIR/logs/reproduce_dry_run.err"

echo "user path: every step passed (logs in $DIR/logs)"
