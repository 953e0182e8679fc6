# Sourced by scripts/gpu_check.sh and scripts/gpu_tables.sh, in the repo root: the Python
# path and, where the machine lacks grain / tfds / ml-collections / tensorboardX (the GPU
# machine), the packages carried in .gpu/ (docs/gpu.md): .gpu/site.tar.xz (unpacked wheels,
# scripts/gpu_prepare.sh) or else .gpu/whl/*.whl. Sets PY, COMMIT and PYTHONPATH.
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ -z ${COMMIT:-} ]]; then
  COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [[ $COMMIT != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    COMMIT="$COMMIT+dirty"
  fi
fi
if ! "$PY" -c "import grain, tensorflow_datasets, ml_collections, tensorboardX" 2>/dev/null; then
  LTKD_SITE=${LTKD_SITE:-/tmp/ltkd_site}
  mkdir -p "$LTKD_SITE"
  if [[ -f .gpu/site.tar.xz ]]; then
    echo "[gpu_env] unpacking .gpu/site.tar.xz into $LTKD_SITE"
    "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
      .gpu/site.tar.xz "$LTKD_SITE" || return 3
  else
    echo "[gpu_env] pip install .gpu/whl/*.whl into $LTKD_SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$LTKD_SITE" .gpu/whl/*.whl || return 3
  fi
  export PYTHONPATH=$LTKD_SITE:$PYTHONPATH
fi
"$PY" -c "import ltkd_jax.main" || { echo "[gpu_env] ltkd_jax does not import"; return 3; }
