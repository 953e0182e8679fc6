#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for the device tool's `carry` (docs/gpu.md), in the repo root,
# inside the project's venv:
#   .gpu/whl/             the wheels the GPU machine lacks, pinned to this venv (shared wheels.sh)
#   .gpu/site.tar.xz      the same wheels unpacked for Python 3.12 x86-64, xz-compressed:
#                         ~8 MB instead of ~13 MB (what gpu_env.sh unpacks there)
#   .gpu/cifar100-lt100.zip   the CIFAR-100-LT IF100 training subset + test split (47 MB)
#   .gpu/cifar10-lt100.zip    with CIFAR10=1: the CIFAR-10-LT one (for cifar10_lt_if100_r32)
# and prints what would travel: the tree (tracked + untracked, not ignored) plus each carry
# set, against the tool's 64 MiB.
#   bash scripts/gpu_prepare.sh            # SHARED=../shared by default
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SHARED=${SHARED:-}
if [[ -z $SHARED ]]; then
  for d in ../shared ../../shared /work/shared; do
    [[ -d $d/gpu ]] && SHARED=$d && break
  done
fi
[[ -d ${SHARED}/gpu ]] || { echo "no shared/gpu folder (set SHARED=)"; exit 2; }
git check-ignore -q .gpu/x || { echo ".gpu/ is not git-ignored"; exit 2; }
mkdir -p .gpu
[[ -d .gpu/whl ]] || bash "$SHARED/gpu/wheels.sh" .gpu/whl
if [[ ! -f .gpu/site.tar.xz ]]; then
  tmp=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$tmp/site" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --python-version 3.12 --implementation cp \
    --only-binary=:all: .gpu/whl/*.whl
  tar cJf .gpu/site.tar.xz -C "$tmp/site" .
  rm -rf "$tmp"
fi
[[ -f .gpu/cifar100-lt100.zip ]] ||
  python3 "$SHARED/gpu/lt_subset_zip.py" "$SHARED/data/cifar100-png.zip" .gpu/cifar100-lt100.zip
if [[ ${CIFAR10:-0} == 1 && ! -f .gpu/cifar10-lt100.zip ]]; then
  python3 "$SHARED/gpu/lt_subset_zip.py" "$SHARED/data/cifar10-jpeg.zip" .gpu/cifar10-lt100.zip
fi

size() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | awk '/total$/{s+=$1} END{print s}')
limit=$(( 64 * 1024 * 1024 ))
report() {  # report NAME PATHS...: the tree plus PATHS against the limit
  local name=$1; shift
  local total=$(( tree + $(size "$@") ))
  awk -v n="$name" -v t="$total" -v l="$limit" 'BEGIN {
    printf "%-30s %5.1f MB of %.1f MB: %s\n", n, t / 1e6, l / 1e6,
      (t < l ? sprintf("fits, %.1f MB left", (l - t) / 1e6) : "TOO LARGE") }'
}
echo "tree that travels: $(( tree / 1000 )) kB"
report "gpu_check / cifar100 tables" .gpu/site.tar.xz .gpu/cifar100-lt100.zip
[[ -f .gpu/cifar10-lt100.zip ]] && report "cifar10 tables" .gpu/site.tar.xz .gpu/cifar10-lt100.zip
exit 0
