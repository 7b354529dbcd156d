#!/usr/bin/env bash
# Create (or update) the project-local environment .venv with the pinned OpenMMLab 2.0 stack.
#
# Idempotent: a stamp file records the pins that were installed, so a second run only re-installs mmoverlock
# itself (seconds). mmcv ships no wheel for current torch and is built from its sdist once; the wheel is
# cached under $MMOVERLOCK_CACHE (default ~/.cache/mmoverlock) keyed by mmcv, torch and Python versions.
#
# Usage: tools/setup_env.sh            (from the repository root or anywhere)
# Env:   PYTHON (interpreter to create the venv with, default python3.11 or python3)
#        MMOVERLOCK_CACHE, MAX_JOBS (parallel compile jobs, default: number of cores)
#        MMCV_CUDA=1: build mmcv with its CUDA ops as well (GPU machines; needs the CUDA toolkit at CUDA_HOME, default
#        /usr/local/cuda, and compiles for TORCH_CUDA_ARCH_LIST, default 9.0); default 0: CPU ops only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
CACHE="${MMOVERLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmoverlock}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

# ---- the pinned stack: requirements/*.txt (setup.py reads the same files for its extras) ----------------------
REQ="$ROOT/requirements"
# mmcv is built from its sdist at the version mminstall.txt pins (it ships no wheel for current torch).
MMCV_VERSION="$(sed -n 's/^mmcv==\([^[:space:]#]*\).*/\1/p' "$REQ/mminstall.txt")"
[[ -n $MMCV_VERSION ]] || { echo "no mmcv==VERSION line in $REQ/mminstall.txt" >&2; exit 1; }
MMCV_CUDA="${MMCV_CUDA:-0}"
OPENCV_SPEC="$(grep -o '^opencv-python-headless[^[:space:]#]*' "$REQ/mminstall.txt")"
STAMP_TEXT="$(cat "$REQ"/{torch,build,mminstall,tests,mim}.txt; echo "mmcv CUDA ops: $MMCV_CUDA"
  $PY -c 'import sys; print(sys.version)')"
STAMP="$VENV/.mmoverlock-stack"

log() { printf '\033[1m[setup_env]\033[0m %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# This machine's pip config lists local index folders that hold only some packages; pip warns for every other one.
quiet_pip() { "$VPY" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
pip_install() { quiet_pip install --disable-pip-version-check -q "$@"; }

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$STAMP_TEXT" ]]; then
  log "pinned stack already installed ($STAMP)"
else
  log "installing torch and build tools"
  pip_install --upgrade pip
  pip_install -r "$REQ/torch.txt" -r "$REQ/build.txt"

  TORCH_VER="$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  PYTAG="$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  WHEEL_DIR="$CACHE/wheels/mmcv${MMCV_VERSION}-torch${TORCH_VER}-${PYTAG}"
  # -g0 keeps the wheel small (2 MB vs 32 MB for the CPU ops).
  if [[ $MMCV_CUDA == 1 ]]; then
    WHEEL_DIR+="-cuda"
    MMCV_CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
    if [[ ! -x $MMCV_CUDA_HOME/bin/nvcc ]]; then
      log "MMCV_CUDA=1 needs a CUDA toolkit: no bin/nvcc under CUDA_HOME=$MMCV_CUDA_HOME"; exit 1
    fi
    MMCV_BUILD_ENV=(MMCV_WITH_OPS=1 FORCE_CUDA=1 CUDA_HOME="$MMCV_CUDA_HOME" CFLAGS="-g0"
      TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}")
    MMCV_OPS="CPU and CUDA ops for TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}"
  else  # CUDA_HOME stays unset so mmcv's setup does not pick nvcc
    MMCV_BUILD_ENV=(MMCV_WITH_OPS=1 FORCE_CUDA=0 CFLAGS="-g0")
    MMCV_OPS="CPU ops (about 11 minutes on 2 cores)"
  fi
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION from source with $MMCV_OPS; cached in $WHEEL_DIR"
    BUILD="$(mktemp -d)"
    quiet_pip download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers need C++20; this mmcv hard-codes -std=c++17 and the last -std wins.
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    mkdir -p "$WHEEL_DIR.tmp"
    # Its setuptools prints ~700 lines of deprecation warnings: they go to a log, shown only if the build fails.
    BUILD_LOG="$CACHE/mmcv-$MMCV_VERSION-build.log"
    if ! (cd "$SRC" && unset CUDA_HOME && export "${MMCV_BUILD_ENV[@]}" && \
          quiet_pip wheel -q --no-build-isolation --no-deps . -w "$WHEEL_DIR.tmp") > "$BUILD_LOG" 2>&1; then
      tail -n 60 "$BUILD_LOG" >&2
      log "building mmcv failed; full log: $BUILD_LOG"
      exit 1
    fi
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    rm -rf "$BUILD"
  else
    log "reusing cached mmcv wheel $(ls "$WHEEL_DIR"/mmcv-*.whl)"
  fi

  log "installing mmcv, mmengine, mmdet, mmseg and friends"
  # This wheel replaces an mmcv of the same version built with the other ops (MMCV_CUDA switched), then satisfies
  # mminstall.txt's mmcv pin; torch and build tools are listed again so pip keeps them.
  pip_install --force-reinstall --no-deps "$WHEEL_DIR"/mmcv-*.whl
  pip_install "$WHEEL_DIR"/mmcv-*.whl -r "$REQ/mminstall.txt" -r "$REQ/tests.txt" -r "$REQ/torch.txt" \
    -r "$REQ/build.txt"
  pip_install --no-deps -r "$REQ/mim.txt"
  # mmengine/mmcv pull the GUI opencv-python; both own cv2/, so remove it and restore the headless build.
  if "$VPY" -m pip show -q opencv-python >/dev/null 2>&1; then
    "$VPY" -m pip uninstall -y -q opencv-python
    pip_install --force-reinstall --no-deps "$OPENCV_SPEC"
  fi
  printf '%s' "$STAMP_TEXT" > "$STAMP"
fi

# timm's own model tests (tests/test_models.py of the pinned timm's sdist on the package registry; the wheel does not
# ship them), unpacked once into the environment for `make test`, which runs them on overlock_*. Nothing is fetched
# at test time; the sdist is cached under $CACHE/sdists.
TIMM_VERSION="$(sed -n 's/^timm==\([^[:space:]#]*\).*/\1/p' "$REQ/mminstall.txt")"
[[ -n $TIMM_VERSION ]] || { echo "no timm==VERSION line in $REQ/mminstall.txt" >&2; exit 1; }
TIMM_TESTS="$VENV/timm-tests"
if [[ "$(cat "$TIMM_TESTS/VERSION" 2>/dev/null)" != "$TIMM_VERSION" ]]; then
  log "unpacking timm $TIMM_VERSION's model tests into $TIMM_TESTS"
  SDISTS="$CACHE/sdists"
  mkdir -p "$SDISTS"
  if [[ ! -f "$SDISTS/timm-$TIMM_VERSION.tar.gz" ]]; then
    quiet_pip download -q --no-deps --no-binary :all: "timm==$TIMM_VERSION" -d "$SDISTS"
  fi
  rm -rf "$TIMM_TESTS" && mkdir -p "$TIMM_TESTS"
  # pyproject.toml carries timm's pytest markers; tests/ is a package (its __init__.py) with a conftest.
  tar -xzf "$SDISTS/timm-$TIMM_VERSION.tar.gz" -C "$TIMM_TESTS" --strip-components=1 \
    "timm-$TIMM_VERSION/pyproject.toml" "timm-$TIMM_VERSION/tests/__init__.py" \
    "timm-$TIMM_VERSION/tests/conftest.py" "timm-$TIMM_VERSION/tests/test_models.py"
  printf '%s' "$TIMM_VERSION" > "$TIMM_TESTS/VERSION"
fi

# The test set-up also builds mmoverlock._ext_testing, the test-only drivers of the CUDA kernels' bodies (a release
# install leaves them out); MMOVERLOCK_BUILD_TESTING=0 skips them.
export MMOVERLOCK_BUILD_TESTING="${MMOVERLOCK_BUILD_TESTING:-1}"
EXT_MODULES='import mmoverlock._ext'
if [[ "$MMOVERLOCK_BUILD_TESTING" == 1 ]]; then EXT_MODULES+=', mmoverlock._ext_testing'; fi
# Rebuild the extension only when its sources, setup.py, requirements/ (the install's metadata: setup.py's extras) or
# the testing flag changed; a CUDA build takes minutes on 2 cores.
EXT_HASH="$(cd "$ROOT" && { cat setup.py requirements/*.txt $(find mmoverlock/ops/csrc -type f | sort); \
  echo "MMOVERLOCK_BUILD_TESTING=$MMOVERLOCK_BUILD_TESTING"; } | sha256sum | cut -c1-16)"
EXT_STAMP="$VENV/.mmoverlock-ext"
if [[ -f "$EXT_STAMP" ]] && [[ "$(cat "$EXT_STAMP")" == "$EXT_HASH" ]] && \
   (cd "$ROOT" && "$VPY" -c "$EXT_MODULES" 2>/dev/null); then
  log "mmoverlock extension up to date"
else
  log "installing mmoverlock (editable; compiles mmoverlock._ext, with CUDA kernels when a CUDA toolkit is found)"
  # The CUDA kernels are compiled when a toolkit is found (setup.py checks $CUDA_HOME/bin/nvcc and says so otherwise).
  if [[ -z "${CUDA_HOME:-}" ]] && [[ -x /usr/local/cuda/bin/nvcc ]]; then export CUDA_HOME=/usr/local/cuda; fi
  if [[ "${FORCE_CUDA:-}" == 0 ]]; then log "CUDA kernels off (FORCE_CUDA=0): compiling the CPU kernels only"
  elif [[ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" && -f "$CUDA_HOME/include/cuda_runtime.h" ]]; then
    log "compiling the CPU and CUDA kernels (nvcc: $CUDA_HOME/bin/nvcc)"
  else log "no CUDA toolkit under CUDA_HOME=${CUDA_HOME:-unset}: compiling the CPU kernels only"; fi
  (cd "$ROOT" && pip_install --no-build-isolation --no-deps -e .)
  printf '%s' "$EXT_HASH" > "$EXT_STAMP"
fi
"$VPY" -c 'import mmoverlock, mmcv, mmdet, mmseg, mmengine, torch; from mmoverlock.ops import available_backends
print(f"mmoverlock {mmoverlock.__version__} | torch {torch.__version__} | mmengine {mmengine.__version__} | "
      f"mmcv {mmcv.__version__} | mmdet {mmdet.__version__} | mmseg {mmseg.__version__} | "
      f"contmix backends {available_backends()}")'
