#!/usr/bin/env bash
# Sets up ddetr on a fresh machine: a virtual environment with the pinned stack
# (requirements/runtime.txt) and ddetr installed in editable mode with its compiled op.
# Safe to re-run: when everything is present it only checks and returns (seconds).
#
#   bash tools/setup.sh            # creates ./.venv
#   DDETR_VENV=/path bash tools/setup.sh
#
# mmcv 2.1.0 has no wheel for torch 2.14 on PyPI. It is taken from a wheel folder
# ($DDETR_WHEELS, ../shared/wheels, ~/.cache/ddetr/wheels), or built once from its sdist
# (with -std=c++20, which torch 2.14 headers need) and cached in ~/.cache/ddetr/wheels.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DDETR_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
CACHE=${DDETR_CACHE:-$HOME/.cache/ddetr/wheels}
PY=$VENV/bin/python
log() { printf '[ddetr setup] %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x "$PY" ]; then
  log "creating virtual environment $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi

# The stamp records what was installed; when it matches, the stack is not touched again.
want=$(cat "$ROOT"/requirements/*.txt | sha1sum | cut -c1-16)
stamp=$VENV/.ddetr-stack-$want
if [ ! -f "$stamp" ]; then
  find_links=()
  for dir in ${DDETR_WHEELS:-} "$ROOT/../shared/wheels" "$CACHE"; do
    [ -d "$dir" ] && find_links+=(--find-links "$dir")
  done
  # pip's notes about this machine's empty local indexes are noise; real errors still show.
  pip_install() {
    "$PY" -m pip install --disable-pip-version-check -q -c "$ROOT/requirements/constraints.txt" \
      "${find_links[@]}" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  }

  log "installing build tools"
  # requirements/constraints.txt pins a setuptools that still ships pkg_resources.
  pip_install setuptools wheel ninja
  log "installing torch 2.14.1 / torchvision 0.29.1 (a large wheel; about a minute from a local disk)"
  pip_install torch==2.14.1 torchvision==0.29.1

  if ! pip_install --no-index --no-deps mmcv==2.1.0 2>/dev/null; then
    log "no mmcv 2.1.0 wheel in the wheel folders: building it from its sdist (~25 min on 2 cores, once)"
    build=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary :all: mmcv==2.1.0 -d "$build"
    tar -xzf "$build"/mmcv-2.1.0.tar.gz -C "$build"
    # torch 2.14's headers require C++20; mmcv 2.1.0's setup.py asks for C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$build"/mmcv-2.1.0/setup.py
    mkdir -p "$CACHE"
    (cd "$build"/mmcv-2.1.0 && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
      "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$CACHE")
    rm -rf "$build"
    find_links+=(--find-links "$CACHE")
    pip_install --no-deps mmcv==2.1.0
  fi
  log "installing mmengine, mmcv's and mmdet's dependencies, pycocotools, scipy, pytest"
  pip_install -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
  "$PY" -c "import mmcv.ops, mmdet.datasets" || { log "mmcv's compiled ops do not import"; exit 1; }
  rm -f "$VENV"/.ddetr-stack-*
  touch "$stamp"
fi

# ddetr itself: an editable install once; then the extension is (re)built in place, which
# ninja skips when the C++/CUDA sources are unchanged. A failed build stops the setup.
if ! (cd / && "$PY" -c "import ddetr" 2>/dev/null); then
  log "installing ddetr (editable)"
  (cd "$ROOT" && "$PY" -m pip install --disable-pip-version-check -q --no-build-isolation \
    --no-deps -e . 2> >(grep -v 'is ignored: it is neither' >&2))
fi
if [ "${DDETR_WITH_OPS:-1}" != 0 ]; then
  build_log=$(mktemp)
  if ! (cd "$ROOT" && "$PY" setup.py -q build_ext --inplace) > "$build_log" 2>&1; then
    cat "$build_log" >&2
    log "compiling ddetr's op failed (see above); DDETR_WITH_OPS=0 skips it"
    rm -f "$build_log"
    exit 1
  fi
  grep -E '^\[ddetr build\]' "$build_log" >&2 || true
  rm -f "$build_log"
fi
(cd / && "$PY" -c "import ddetr.ops as o; print('[ddetr setup] ready:', o.backend_info())") >&2
