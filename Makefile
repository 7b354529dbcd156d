# The two commands of the README. Both create or update the project-local .venv first (tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: setup smoke-train test clean

setup:
	bash tools/setup_env.sh

# Smoke training: generate the bundled data, train + evaluate OverLoCK Cascade Mask R-CNN and UperNet on it from
# scratch on the CPU, run the image demo on held-out pictures, fail unless both models clearly learned.
smoke-train: setup
	$(PY) tools/misc/smoke_train.py

# The test suite (CPU; CUDA tests skip with a reason where no GPU is present).
test: setup
	$(PY) -m pytest tests -q -ra --durations=15

clean:
	rm -rf build *.egg-info mmoverlock/_ext*.so work_dirs outputs
