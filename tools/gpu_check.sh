#!/usr/bin/env bash
# One prepared validation of mmoverlock on a GPU machine, run from the working tree: the full check in at most
# 9 min 15 s, --quick in at most 4 (each step's limit below; the limits add up to the deadline, full / quick):
#   wheels     15 / 20 s  install the carried pure-Python wheels (tools/gpu_check/wheels.txt, from .whl/) with pip
#              --target; missing ones are fetched when the registry is reachable, else named with the fix
#   build      120 / 130 s  compile mmoverlock._ext with its CUDA kernels in place, for the visible GPU (or
#              TORCH_CUDA_ARCH_LIST), with the CUDA toolkit found at CUDA_HOME, nvcc on PATH or torch's guess
#   imports    20 / 15 s  mmoverlock.models and the ContMix backends ('cuda' must be built)
#   op_tests   90 / 55 s  CUDA op tests: float64/float32/float16/bfloat16 against the float64 definition,
#              deterministic mode, device/stream/grid/kernel-size behaviours, opcheck and torch.compile, the built
#              library's architectures and division calls, the depthwise conv's CUDA kernels (tests/test_ops);
#              --quick: test_contmix_cuda.py, test_cuda_binary.py and test_depthwise.py's CUDA tests
#   model_tests  80 s (full only)  backbone parity on CUDA in float64 against tests/data/reference, float16 and
#              bfloat16 autocast training steps, float16 GradScaler recovery (tests/test_models)
#   contmix_bench  50 / 20 s  the ContMix op benchmark on CUDA: fused vs the unfused chain vs the authors' unfold,
#              forward and forward+backward, with roofline figures ($CONTMIX_BENCH); --quick: the fused kernels
#              at the default case only
#   backbone   45 s (full only)  an OverLoCK-T backbone training step at 800x1333, batch 2: time and memory
#   depthwise_bench  60 s (full only)  the depthwise op's CUDA kernels against cuDNN on OverLoCK-T's depthwise shapes
#              (1024x1024, batch 2)
#   backbone_compare  75 s (full only)  OverLoCK-T (fused and the authors' ContMix), ConvNeXt-T and Swin-T: inference,
#              training step and its peak memory at 800x1333, batch 2, float32
# Writes to OUT: gpu_check.log (every step's output), summary.json and summary.md (steps, tests, figures),
# backbone.json, contmix/results.{json,md,png}, depthwise/cuda/depthwise.{json,md} and
# backbone_compare/results.{json,md,png}. Exits non-zero when any step fails, or when a
# GPU test was skipped for a reason other than a missing second GPU.
#
# Usage:
#   tools/gpu_check.sh [--quick] OUT    on the GPU machine (python3 holds torch; .whl/ carried beside the tree)
#   tools/gpu_check.sh --dry-run [--quick] OUT
#                                       without a GPU, with twice the time: checks the wheels, builds, imports every
#                                       module the GPU run
#                                       imports as on the bare image (tools/gpu_check/bare_image), collects the GPU
#                                       tests, runs the benchmark steps at toy sizes on the CPU and logs each command
#   tools/gpu_check.sh --fetch-wheels   downloads the wheels of tools/gpu_check/wheels.txt for Python 3.12 into .whl/
# Environment: PYTHON (python3; for --dry-run .venv/bin/python when present), WHEEL_DIR (.whl), CONTMIX_BENCH (the
# op benchmark script, default: tools/analysis_tools/benchmark_contmix.py),
# CONTMIX_BENCH_ARGS, TORCH_CUDA_ARCH_LIST, CUDA_HOME, MAX_JOBS, TIME_LIMIT_S (555; 240 with --quick).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/tools/gpu_check"
cd "$ROOT"

MODE=gpu
QUICK=0
while [[ ${1:-} == --* ]]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --quick) QUICK=1 ;;
    --fetch-wheels) MODE=fetch ;;
    *) echo "gpu_check.sh: unknown option $1 (--dry-run, --quick, --fetch-wheels)" >&2; exit 2 ;;
  esac
  shift
done
WHEEL_DIR="${WHEEL_DIR:-$ROOT/.whl}"

# fetch_wheels DIR: download the pinned wheels (for the GPU image's Python 3.12) into DIR.
fetch_wheels() {
  mkdir -p "$1"
  "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$1" \
    $(sed 's/#.*//' "$HERE/wheels.txt")
}

if [[ $MODE == fetch ]]; then
  fetch_wheels "$WHEEL_DIR"
  exit
fi

OUT="${1:?usage: tools/gpu_check.sh [--dry-run] [--quick] OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu_check.log"
: > "$LOG"
if [[ $MODE == dry && -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; fi
PY="${PYTHON:-python3}"
CONTMIX_BENCH="${CONTMIX_BENCH:-tools/analysis_tools/benchmark_contmix.py}"
# The dry run rehearses on a CPU machine, often a loaded one: it gets twice the time, for every step.
SLOW=$([[ $MODE == dry ]] && echo 2 || echo 1)
DEADLINE=$(( $(date +%s) + ${TIME_LIMIT_S:-$(( SLOW * (QUICK ? 240 : 555) ))} ))
# limit FULL QUICK: a step's limit in seconds in this run (the full run's limits add up to 555, --quick's to 240).
limit() { echo $(( SLOW * (QUICK ? $2 : $1) )); }
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
log "mmoverlock gpu_check ($MODE$( (( QUICK )) && echo ', quick')) at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes'), $(date -u +%FT%TZ)"
{ nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU visible"; } | tee -a "$LOG"
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]} | torch {torch.__version__} | cuda {torch.version.cuda} | gpus {torch.cuda.device_count()}")' 2>&1 | tee -a "$LOG"

# ---- wheels ----------------------------------------------------------------------------------------------------
SITE="$WORK/site"
# missing_wheels: the pins of wheels.txt with no wheel in WHEEL_DIR (file names spell a distribution's '-' as '_').
missing_wheels() {
  local pin files
  for pin in $(sed 's/#.*//' "$HERE/wheels.txt"); do
    files=("$WHEEL_DIR/$(tr - _ <<< "${pin%%==*}")-${pin#*==}-"*.whl)
    [[ -f ${files[0]} ]] || echo "$pin"
  done
}
check_wheels() {
  local pin found=() missing
  missing=$(missing_wheels)
  if [[ -n $missing ]]; then
    echo "missing in $WHEEL_DIR: $(echo $missing); fetching them (pip download, 60 s at most)"
    timeout 60 bash -c 'fetch_wheels "$1"' _ "$WHEEL_DIR" 2>&1 | tail -n 3
    missing=$(missing_wheels)
    if [[ -n $missing ]]; then
      echo "still missing: $(echo $missing). No registry is reachable from here: on a machine with network run"
      echo "  tools/gpu_check.sh --fetch-wheels   (writes $WHEEL_DIR) and carry that folder with the tree"
      return 1
    fi
  fi
  for pin in $(sed 's/#.*//' "$HERE/wheels.txt"); do
    local files=("$WHEEL_DIR/$(tr - _ <<< "${pin%%==*}")-${pin#*==}-"*.whl)
    [[ ${files[0]} == *-none-any.whl ]] || { echo "not a pure-Python wheel: ${files[0]}"; return 1; }
    echo "ok $pin: $(basename "${files[0]}") ($(du -k "${files[0]}" | cut -f1) KiB)"
    found+=("${files[0]}")
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${found[@]}"
}
export -f check_wheels missing_wheels fetch_wheels
export HERE WHEEL_DIR SITE PY MODE
run_step wheels "$(limit 15 20)" check_wheels
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [[ $MODE == dry ]]; then
  # Every Python process below sees only the bare image's packages, the wheels and the repository.
  export PYTHONPATH="$HERE/bare_image:$PYTHONPATH" MMOVERLOCK_IMAGE_PACKAGES="$HERE/image_packages.txt"
  export MMOVERLOCK_CARRIED="$SITE"
fi

# ---- build -----------------------------------------------------------------------------------------------------
# find_cuda_home: a CUDA toolkit root (bin/nvcc and include/cuda_runtime.h) from CUDA_HOME, nvcc on PATH, torch's
# own guess or /usr/local/cuda, printed; or, on stderr, why none was found.
find_cuda_home() {
  local torch_guess nvcc candidate
  torch_guess=$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null)
  nvcc=$(command -v nvcc || true)
  for candidate in "${CUDA_HOME:-}" "${nvcc:+$(dirname "$(dirname "$(readlink -f "$nvcc")")")}" "$torch_guess" \
                   /usr/local/cuda; do
    if [[ -n $candidate && -x $candidate/bin/nvcc && -f $candidate/include/cuda_runtime.h ]]; then
      echo "$candidate"
      return 0
    fi
  done
  echo "no CUDA toolkit (bin/nvcc and include/cuda_runtime.h): CUDA_HOME='${CUDA_HOME:-}', nvcc on PATH:" \
       "'${nvcc:-none}', torch's guess: '${torch_guess:-none}', /usr/local/cuda: $([[ -d /usr/local/cuda ]] &&
       echo 'incomplete' || echo 'absent')" >&2
  return 1
}

build_extension() {
  local so cuda_home
  so="$(ls mmoverlock/_ext*.so 2>/dev/null | head -n1)"
  if [[ $MODE == dry && -n $so ]] && "$PY" -c 'import mmoverlock._ext' && \
     [[ -z $(find mmoverlock/ops/csrc setup.py -newer "$so" -type f) ]]; then
    echo "$so is up to date with csrc/ and imports (the GPU run builds with FORCE_CUDA=1 setup.py build_ext --inplace)"
    return 0
  fi
  if cuda_home=$(find_cuda_home); then
    echo "CUDA toolkit: $cuda_home"
    export CUDA_HOME=$cuda_home
  elif [[ $MODE == gpu ]]; then
    return 1  # the reason is on stderr
  fi
  if [[ $MODE == gpu ]]; then export FORCE_CUDA=1; fi  # else setup.py decides, as for an ordinary install
  # TORCH_CUDA_ARCH_LIST unset: torch builds for the visible GPU (setup.py's list of every current GPU without one).
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py -q build_ext --inplace
}
export -f build_extension find_cuda_home
run_step build "$(limit 120 130)" build_extension
[[ " ${FAILED[*]} " == *" build "* ]] && STOP="the build failed"

# ---- imports ---------------------------------------------------------------------------------------------------
NEED_CUDA=$([[ $MODE == gpu ]] && echo 1 || echo 0)
run_step imports "$(limit 20 15)" "$PY" -c "
import mmengine, timm, torch
import mmoverlock.models
from mmoverlock.ops import available_backends
print('mmengine', mmengine.__version__, '| timm', timm.__version__, '| contmix backends', available_backends())
assert 'cuda' in available_backends() or not $NEED_CUDA, 'mmoverlock._ext was built without its CUDA kernels'
assert torch.cuda.is_available() or not $NEED_CUDA, 'torch sees no GPU'
"
[[ " ${FAILED[*]} " == *" imports "* ]] && STOP="the imports failed"

# ---- tests -----------------------------------------------------------------------------------------------------
# -k keeps the CUDA tests of the files that also hold CPU ones (the bodies' CPU-driver tests need _ext_testing).
if (( QUICK )); then
  OP_TESTS=(tests/test_ops/test_contmix_cuda.py tests/test_ops/test_cuda_binary.py tests/test_ops/test_depthwise.py
            -k '(cuda or binary) and not bodies')
else
  OP_TESTS=(tests/test_ops/test_contmix_cuda.py tests/test_ops/test_cuda_binary.py tests/test_ops/test_contmix.py
            tests/test_ops/test_depthwise.py -k '(cuda or binary) and not bodies')
fi
MODEL_TESTS=(tests/test_models/test_overlock_cuda.py)
PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider)
if [[ $MODE == gpu ]]; then
  # Eight workers (pytest-xdist, when installed) share the GPU; the float64 references run on the CPU cores.
  WORKERS=(); "$PY" -c 'import xdist' 2>/dev/null && WORKERS=(-n 8)
  run_step op_tests "$(limit 90 55)" env OMP_NUM_THREADS=2 "${PYTEST[@]}" "${WORKERS[@]}" \
    --junitxml "$WORK/op_tests.xml" "${OP_TESTS[@]}"
  (( QUICK )) || run_step model_tests "$(limit 80 0)" "${PYTEST[@]}" --junitxml "$WORK/model_tests.xml" \
    "${MODEL_TESTS[@]}"
else
  run_step op_tests "$(limit 90 55)" "${PYTEST[@]}" --collect-only "${OP_TESTS[@]}"
  (( QUICK )) || run_step model_tests "$(limit 80 0)" "${PYTEST[@]}" --collect-only "${MODEL_TESTS[@]}"
fi

# ---- benchmarks --------------------------------------------------------------------------------------------------
QUICK_BENCH_ARGS="--cases 2,8,50,84,16,13 --methods fused-cuda,fused-torch --budget 0.2 --no-memory"
if [[ $MODE == gpu ]]; then
  run_step contmix_bench "$(limit 50 20)" "$PY" "$CONTMIX_BENCH" --device cuda --out "$OUT/contmix" \
    ${CONTMIX_BENCH_ARGS:-$( (( QUICK )) && echo "$QUICK_BENCH_ARGS" || echo --budget 0.2)}
  (( QUICK )) || run_step backbone "$(limit 45 0)" "$PY" tools/analysis_tools/benchmark_backbone.py --arch t \
    --shape 800 1333 --batch-size 2 --device cuda --out "$OUT/backbone.json"
  (( QUICK )) || run_step depthwise_bench "$(limit 60 0)" "$PY" tools/analysis_tools/benchmark_depthwise.py \
    --device cuda --size 1024 --batch 2 --iters 3 --out "$OUT/depthwise"
  (( QUICK )) || run_step backbone_compare "$(limit 75 0)" "$PY" tools/analysis_tools/compare_backbones.py \
    --device cuda --batch 2 --sizes 800x1333 --models overlock overlock-authors convnext swin --no-flops \
    --out-dir "$OUT/backbone_compare"
else  # the same programs on the CPU at toy sizes; the op benchmark (another tool, tested on its own) imports only
  run_step contmix_bench "$(limit 50 20)" "$PY" "$CONTMIX_BENCH" --help
  (( QUICK )) || run_step backbone "$(limit 45 0)" "$PY" tools/analysis_tools/benchmark_backbone.py --arch xt \
    --shape 64 64 --batch-size 1 --iters 1 --warmup 0 --device cpu --out "$OUT/backbone.json"
  (( QUICK )) || run_step depthwise_bench "$(limit 60 0)" "$PY" tools/analysis_tools/benchmark_depthwise.py \
    --size 64 --iters 1 --isa best --out "$OUT/depthwise"
  (( QUICK )) || run_step backbone_compare "$(limit 75 0)" "$PY" tools/analysis_tools/compare_backbones.py \
    --sizes 64 --models overlock --rounds 1 --no-flops --no-memory --profile-sizes --out-dir "$OUT/backbone_compare"
fi

# ---- summary -----------------------------------------------------------------------------------------------------
"$PY" "$HERE/report.py" --mode "$MODE" $( (( QUICK )) && echo --quick) --steps "$WORK/steps.tsv" \
  --junit-dir "$WORK" --out "$OUT" 2>&1 | tee -a "$LOG"
report_rc=${PIPESTATUS[0]}
if (( ${#FAILED[@]} > 0 || report_rc != 0 )); then
  log "gpu_check ($MODE): FAILED: ${FAILED[*]:-} $( (( report_rc != 0 )) && echo "(report: rc $report_rc)")"
  exit 1
fi
log "gpu_check ($MODE): all steps passed; results in $OUT"
