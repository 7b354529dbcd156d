#!/usr/bin/env bash
# One prepared validation of mmoverlock on a GPU machine, run from the working tree in at most 8 minutes:
#   wheels     install the carried pure-Python wheels (tools/gpu_check/wheels.txt, from .whl/) with pip --target
#   build      compile mmoverlock._ext with its CUDA kernels in place (TORCH_CUDA_ARCH_LIST, default 9.0)
#   imports    mmoverlock.models and the ContMix backends ('cuda' must be built)
#   op_tests   CUDA op tests: float64/float32/float16/bfloat16 against the float64 definition, deterministic mode,
#              device/stream/grid/kernel-size behaviours, opcheck and torch.compile (tests/test_ops)
#   model_tests  backbone parity on CUDA in float64 against tests/data/reference, bfloat16 and float16 autocast
#              training steps of OverLoCK-T at 512x512 with finite loss and gradients (tests/test_models)
#   contmix_bench  the ContMix op benchmark on CUDA: fused vs the unfused chain vs the authors' unfold, forward and
#              forward+backward, with roofline figures: achieved GB/s as a fraction of a device-to-device copy
#              timed in the same run ($CONTMIX_BENCH)
#   backbone   an OverLoCK-T backbone training step at 800x1333, batch 2: time and max_memory_allocated
# Writes to OUT: gpu_check.log (every step's output), summary.json and summary.md (steps, tests, figures),
# backbone.json and contmix/results.{json,md,png}. Exits non-zero when any step fails, or when a
# GPU test was skipped for a reason other than a missing second GPU.
#
# Usage:
#   tools/gpu_check.sh OUT              on the GPU machine (python3 holds torch; .whl/ carried beside the tree)
#   tools/gpu_check.sh --dry-run OUT    without a GPU: checks the wheels, builds, imports every module the GPU run
#                                       imports as on the bare image (tools/gpu_check/bare_image), collects the GPU
#                                       tests, runs the benchmark steps at toy sizes on the CPU and logs each command
#   tools/gpu_check.sh --fetch-wheels   downloads the wheels of tools/gpu_check/wheels.txt for Python 3.12 into .whl/
# Environment: PYTHON (python3; for --dry-run .venv/bin/python when present), WHEEL_DIR (.whl), CONTMIX_BENCH (the
# op benchmark script, default: tools/analysis_tools/benchmark_contmix.py),
# CONTMIX_BENCH_ARGS, TORCH_CUDA_ARCH_LIST, MAX_JOBS, TIME_LIMIT_S (480).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/tools/gpu_check"
cd "$ROOT"

MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --fetch-wheels) MODE=fetch; shift ;;
esac
WHEEL_DIR="${WHEEL_DIR:-$ROOT/.whl}"
WHEELS=($(sed 's/#.*//' "$HERE/wheels.txt"))

if [[ $MODE == fetch ]]; then
  mkdir -p "$WHEEL_DIR"
  exec "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEEL_DIR" \
    "${WHEELS[@]}"
fi

OUT="${1:?usage: tools/gpu_check.sh [--dry-run] OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu_check.log"
: > "$LOG"
if [[ $MODE == dry && -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; fi
PY="${PYTHON:-python3}"
CONTMIX_BENCH="${CONTMIX_BENCH:-tools/analysis_tools/benchmark_contmix.py}"
DEADLINE=$(( $(date +%s) + ${TIME_LIMIT_S:-480} ))
FAILED=()
STOP=""

log() { printf '%s\n' "$*" | tee -a "$LOG"; }

# run_step NAME LIMIT_S COMMAND...: runs within min(LIMIT_S, time left), logs, records name/rc/seconds. COMMAND may
# be a function of this script (exported, as timeout runs it in a child bash).
run_step() {
  local name=$1 limit=$2 left rc start command
  shift 2
  command="$(tr '\t\n' '  ' <<< "$*")"
  left=$(( DEADLINE - $(date +%s) ))
  (( limit > left )) && limit=$left
  if [[ -n $STOP ]] || (( limit < 5 )); then
    log "===== $name: not run (${STOP:-time limit reached})"
    printf '%s\t%s\t%s\t%s\n' "$name" "not run" 0 "$command" >> "$WORK/steps.tsv"
    FAILED+=("$name")
    return
  fi
  log "===== $name (limit ${limit}s): $command"
  start=$(date +%s)
  if declare -F "$1" > /dev/null; then
    timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$WORK/step.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" > "$WORK/step.log" 2>&1
  fi
  rc=$?
  cat "$WORK/step.log" >> "$LOG"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$command" >> "$WORK/steps.tsv"
  if (( rc != 0 )); then
    FAILED+=("$name")
    tail -n 30 "$WORK/step.log" | sed 's/^/    /'
  fi
  log "===== $name: $([[ $rc == 0 ]] && echo ok || echo "FAILED (rc $rc)") in $(( $(date +%s) - start ))s"
}

# ---- environment: what the run had ---------------------------------------------------------------------------
log "mmoverlock gpu_check ($MODE) at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes'), $(date -u +%FT%TZ)"
{ nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU visible"; } | tee -a "$LOG"
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]} | torch {torch.__version__} | cuda {torch.version.cuda} | gpus {torch.cuda.device_count()}")' 2>&1 | tee -a "$LOG"

# ---- wheels ----------------------------------------------------------------------------------------------------
SITE="$WORK/site"
check_wheels() {
  local pin found=()
  for pin in $(sed 's/#.*//' "$HERE/wheels.txt"); do  # wheel file names spell a distribution's '-' as '_'
    local files=("$WHEEL_DIR/$(tr - _ <<< "${pin%%==*}")-${pin#*==}-"*.whl)
    [[ -f ${files[0]} ]] || { echo "missing wheel for $pin in $WHEEL_DIR (tools/gpu_check.sh --fetch-wheels)"; return 1; }
    [[ ${files[0]} == *-none-any.whl ]] || { echo "not a pure-Python wheel: ${files[0]}"; return 1; }
    echo "ok $pin: $(basename "${files[0]}") ($(du -k "${files[0]}" | cut -f1) KiB)"
    found+=("${files[0]}")
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${found[@]}"
}
export -f check_wheels
export HERE WHEEL_DIR SITE PY MODE
run_step wheels 90 check_wheels
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [[ $MODE == dry ]]; then
  # Every Python process below sees only the bare image's packages, the wheels and the repository.
  export PYTHONPATH="$HERE/bare_image:$PYTHONPATH" MMOVERLOCK_IMAGE_PACKAGES="$HERE/image_packages.txt"
  export MMOVERLOCK_CARRIED="$SITE"
fi

# ---- build -----------------------------------------------------------------------------------------------------
build_extension() {
  local so
  so="$(ls mmoverlock/_ext*.so 2>/dev/null | head -n1)"
  if [[ $MODE == dry && -n $so ]] && "$PY" -c 'import mmoverlock._ext' && \
     [[ -z $(find mmoverlock/ops/csrc setup.py -newer "$so" -type f) ]]; then
    echo "$so is up to date with csrc/ and imports (the GPU run builds with FORCE_CUDA=1 setup.py build_ext --inplace)"
    return 0
  fi
  if [[ $MODE == gpu ]]; then export FORCE_CUDA=1; fi  # else setup.py decides, as for an ordinary install
  # As tools/setup_env.sh: the toolkit root, where torch's guess from nvcc's folder may lack the CUDA libraries.
  if [[ -z ${CUDA_HOME:-} && -d /usr/local/cuda ]]; then export CUDA_HOME=/usr/local/cuda; fi
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" setup.py -q build_ext --inplace
}
export -f build_extension
run_step build 300 build_extension
[[ " ${FAILED[*]} " == *" build "* ]] && STOP="the build failed"

# ---- imports ---------------------------------------------------------------------------------------------------
NEED_CUDA=$([[ $MODE == gpu ]] && echo 1 || echo 0)
run_step imports 60 "$PY" -c "
import mmengine, timm, torch
import mmoverlock.models
from mmoverlock.ops import available_backends
print('mmengine', mmengine.__version__, '| timm', timm.__version__, '| contmix backends', available_backends())
assert 'cuda' in available_backends() or not $NEED_CUDA, 'mmoverlock._ext was built without its CUDA kernels'
assert torch.cuda.is_available() or not $NEED_CUDA, 'torch sees no GPU'
"
[[ " ${FAILED[*]} " == *" imports "* ]] && STOP="the imports failed"

# ---- tests -----------------------------------------------------------------------------------------------------
OP_TESTS=(tests/test_ops/test_contmix_cuda.py tests/test_ops/test_contmix.py -k cuda)
MODEL_TESTS=(tests/test_models/test_overlock_cuda.py)
PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider)
if [[ $MODE == gpu ]]; then
  # Four workers (pytest-xdist, when installed) share the GPU; the float64 references run on the CPU cores.
  WORKERS=(); "$PY" -c 'import xdist' 2>/dev/null && WORKERS=(-n 4)
  run_step op_tests 200 env OMP_NUM_THREADS=4 "${PYTEST[@]}" "${WORKERS[@]}" --junitxml "$WORK/op_tests.xml" \
    "${OP_TESTS[@]}"
  run_step model_tests 150 "${PYTEST[@]}" --junitxml "$WORK/model_tests.xml" "${MODEL_TESTS[@]}"
else
  run_step op_tests 120 "${PYTEST[@]}" --collect-only "${OP_TESTS[@]}"
  run_step model_tests 120 "${PYTEST[@]}" --collect-only "${MODEL_TESTS[@]}"
fi

# ---- benchmarks --------------------------------------------------------------------------------------------------
if [[ $MODE == gpu ]]; then
  run_step contmix_bench 120 "$PY" "$CONTMIX_BENCH" --device cuda --out "$OUT/contmix" ${CONTMIX_BENCH_ARGS:---budget 0.3}
  run_step backbone 120 "$PY" tools/analysis_tools/benchmark_backbone.py --arch t --shape 800 1333 --batch-size 2 \
    --device cuda --out "$OUT/backbone.json"
else  # the same programs on the CPU at toy sizes; the op benchmark (another tool, tested on its own) imports only
  run_step contmix_bench 60 "$PY" "$CONTMIX_BENCH" --help
  run_step backbone 120 "$PY" tools/analysis_tools/benchmark_backbone.py --arch xt --shape 64 64 --batch-size 1 \
    --iters 1 --warmup 0 --device cpu --out "$OUT/backbone.json"
fi

# ---- summary -----------------------------------------------------------------------------------------------------
"$PY" "$HERE/report.py" --mode "$MODE" --steps "$WORK/steps.tsv" --junit-dir "$WORK" --out "$OUT" 2>&1 | tee -a "$LOG"
report_rc=${PIPESTATUS[0]}
if (( ${#FAILED[@]} > 0 || report_rc != 0 )); then
  log "gpu_check ($MODE): FAILED: ${FAILED[*]:-} $( (( report_rc != 0 )) && echo "(report: rc $report_rc)")"
  exit 1
fi
log "gpu_check ($MODE): all steps passed; results in $OUT"
