# The two commands of the README. Both create or update the project-local .venv first (tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: setup smoke-train test test-fast clean

setup:
	bash tools/setup_env.sh

# Smoke training: generate the bundled data, train + evaluate OverLoCK Cascade Mask R-CNN and UperNet on it from
# scratch on the CPU, run the image demo on held-out pictures, fail unless both models clearly learned.
smoke-train: setup
	$(PY) tools/misc/smoke_train.py

# The test suite (CPU; CUDA tests skip with a reason where no GPU is present), then timm's own model tests
# (tests/test_models.py of the timm sdist, unpacked into .venv by tools/setup_env.sh) on the overlock_* models that
# `-p mmoverlock` registers. Deselected: the tests that download pretrained weights, and the TorchScript ones, as
# timm's EXCLUDE_JIT_FILTERS does for its own non-scriptable models (the timm section of the docs says why).
TIMM_SELECTION := overlock and not pretrained and not torchscript
# Both suites run on TEST_WORKERS pytest-xdist processes (work stealing: the minutes-long tool tests do not hold the
# others up), each with one torch thread so that they share the cores without oversubscribing them. The tests of
# the kernels' thread splits set their own thread counts.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal
test: setup
	$(PYTEST) tests -q -ra --durations=15
	$(PYTEST) .venv/timm-tests/tests/test_models.py -p mmoverlock -q -ra -k "$(TIMM_SELECTION)"

# The development loop: the suite without the tests marked slow (tools run in subprocesses, whole configs, timm's suite).
test-fast: setup
	$(PYTEST) tests -q -ra -m "not slow and not network" --durations=30

clean:
	rm -rf build *.egg-info mmoverlock/_ext*.so work_dirs outputs
