#!/usr/bin/env bash
# Create (or update) the project-local environment .venv with the pinned OpenMMLab 2.0 stack.
#
# Idempotent: a stamp file records the pins that were installed, so a second run only re-installs mmoverlock
# itself (seconds). mmcv 2.1.0 ships no wheel for current torch and is built from its sdist once; the wheel is
# cached under $MMOVERLOCK_CACHE (default ~/.cache/mmoverlock) keyed by mmcv, torch and Python versions.
#
# Usage: tools/setup_env.sh            (from the repository root or anywhere)
# Env:   PYTHON (interpreter to create the venv with, default python3.11 or python3)
#        MMOVERLOCK_CACHE, MAX_JOBS (parallel compile jobs, default: number of cores)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
CACHE="${MMOVERLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmoverlock}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

# ---- the pinned stack (one place; README's version table mirrors it) --------------------------------------
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# mmcv's setup.py imports pkg_resources (removed in setuptools 81); torch needs setuptools>=77.0.3.
BUILD_PINS=("setuptools>=77.0.3,<81" wheel ninja numpy)
MMCV_VERSION=2.1.0          # mmdet 3.3.0 and mmseg 1.2.2 both require mmcv<2.2.0
OMM_PINS=(mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2)
# mmseg imports ftfy/regex unconditionally; headless OpenCV instead of mmengine's GUI opencv-python.
# onnx, onnxscript (torch.onnx's exporter) and onnxruntime: the export tests run the ONNX form of the backbone.
EXTRA_PINS=(timm==1.0.31 ftfy regex "opencv-python-headless<5" pycocotools matplotlib pytest tqdm
  onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2)
# openmim's own pins downgrade setuptools below torch's floor: install it without deps, plus what it imports.
MIM_PINS=(openmim==0.3.9)
MIM_DEPS=(click colorama model-index pandas requests rich tabulate)

STAMP_TEXT="$(printf '%s\n' "${TORCH_PINS[@]}" "${BUILD_PINS[@]}" "mmcv==$MMCV_VERSION" "${OMM_PINS[@]}" \
  "${EXTRA_PINS[@]}" "${MIM_PINS[@]}" "${MIM_DEPS[@]}" "$($PY -c 'import sys; print(sys.version)')")"
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
  pip_install "${TORCH_PINS[@]}" "${BUILD_PINS[@]}"

  TORCH_VER="$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  PYTAG="$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  WHEEL_DIR="$CACHE/wheels/mmcv${MMCV_VERSION}-torch${TORCH_VER}-${PYTAG}"
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION from source with CPU ops (about 11 minutes on 2 cores); cached in $WHEEL_DIR"
    BUILD="$(mktemp -d)"
    quiet_pip download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17 and the last -std wins.
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    mkdir -p "$WHEEL_DIR.tmp"
    # CPU ops only: CUDA_HOME unset so mmcv's setup does not pick nvcc; -g0 keeps the wheel small (2 MB vs 32 MB).
    # Its setuptools prints ~700 lines of deprecation warnings: they go to a log, shown only if the build fails.
    BUILD_LOG="$CACHE/mmcv-$MMCV_VERSION-build.log"
    if ! (cd "$SRC" && unset CUDA_HOME && export MMCV_WITH_OPS=1 FORCE_CUDA=0 CFLAGS="-g0" && \
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
  pip_install "$WHEEL_DIR"/mmcv-*.whl "${OMM_PINS[@]}" "${EXTRA_PINS[@]}" "${MIM_DEPS[@]}" "${TORCH_PINS[@]}" \
    "${BUILD_PINS[@]}"
  pip_install --no-deps "${MIM_PINS[@]}"
  # mmengine/mmcv pull the GUI opencv-python; both own cv2/, so remove it and restore the headless build.
  if "$VPY" -m pip show -q opencv-python >/dev/null 2>&1; then
    "$VPY" -m pip uninstall -y -q opencv-python
    pip_install --force-reinstall --no-deps "opencv-python-headless<5"
  fi
  printf '%s' "$STAMP_TEXT" > "$STAMP"
fi

# Rebuild the extension only when its sources or setup.py changed (a CUDA build takes minutes on 2 cores).
EXT_HASH="$(cd "$ROOT" && cat setup.py $(find mmoverlock/ops/csrc -type f | sort) | sha256sum | cut -c1-16)"
EXT_STAMP="$VENV/.mmoverlock-ext"
if [[ -f "$EXT_STAMP" ]] && [[ "$(cat "$EXT_STAMP")" == "$EXT_HASH" ]] && \
   (cd "$ROOT" && "$VPY" -c 'import mmoverlock._ext' 2>/dev/null); then
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
