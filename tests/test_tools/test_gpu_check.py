"""The dry run of tools/gpu_check.sh: the GPU validation's CPU-side steps must pass before a GPU is used.

The dry run checks and installs the carried wheels, imports everything the GPU run imports with only the bare GPU
image's packages and those wheels visible, collects the GPU tests, runs the benchmark programs at toy sizes on the
CPU and writes the summary. The wheels come from ``.whl/`` when it holds them, else they are downloaded (as
``tools/gpu_check.sh --fetch-wheels`` does) into a temporary folder.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from _helpers import CPU_ONLY, REPO_ROOT

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

SCRIPT = osp.join(REPO_ROOT, 'tools', 'gpu_check.sh')


def wheel_dir(tmp_path):
    carried = osp.join(REPO_ROOT, '.whl')
    with open(osp.join(REPO_ROOT, 'tools', 'gpu_check', 'wheels.txt')) as f:
        pins = [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]
    present = os.listdir(carried) if osp.isdir(carried) else []
    # A wheel's file name spells the distribution's '-' as '_': mmengine==0.10.7 -> mmengine-0.10.7-*.whl.
    prefixes = ['{}-{}-'.format(*pin.replace('-', '_').split('==')) for pin in pins]
    if all(any(name.startswith(prefix) for name in present) for prefix in prefixes):
        return carried
    fetched = str(tmp_path / 'wheels')
    subprocess.run(['bash', SCRIPT, '--fetch-wheels'], check=True, env=dict(os.environ, WHEEL_DIR=fetched,
                                                                            PYTHON=sys.executable))
    return fetched


def dry_run(tmp_path, *options, **env):
    """Run ``gpu_check.sh --dry-run [options]`` into tmp_path/out; (return code, log text, out folder)."""
    out = tmp_path / 'out'
    # the rehearsal of a machine without a GPU, also where this suite runs on one
    env = dict(os.environ, PYTHON=sys.executable, **CPU_ONLY, **env)
    proc = subprocess.run(['bash', SCRIPT, '--dry-run', *options, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    log = (out / 'gpu_check.log').read_text() if (out / 'gpu_check.log').exists() else proc.stdout + proc.stderr
    return proc.returncode, log, out


def test_gpu_check_dry_run(tmp_path):
    rc, log, out = dry_run(tmp_path, WHEEL_DIR=wheel_dir(tmp_path))
    assert rc == 0, log[-6000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ok'] and summary['mode'] == 'dry' and not summary['quick']
    steps = summary['steps']
    assert [s['name'] for s in steps] == [
        'wheels', 'build', 'imports', 'op_tests', 'model_tests', 'contmix_bench', 'backbone', 'depthwise_bench',
        'backbone_compare']
    assert summary['backbone']['loss_finite']
    assert (out / 'summary.md').read_text().startswith('# gpu_check (dry): passed')
    # The collected GPU tests are listed in the log: the op tests, the library checks and the backbone on CUDA.
    assert 'test_contmix_cuda.py::test_cuda_matches_reference' in log
    assert 'test_cuda_binary.py::test_library_embeds_the_requested_architectures' in log
    assert 'test_overlock_cuda.py::test_cuda_float64_matches_authors' in log
    assert 'test_overlock_cuda.py::test_cuda_float16_grad_scaler_recovers' in log
    assert 'test_depthwise.py::test_cuda_kernels_match_float64_conv' in log
    assert 'test_cuda_bodies' not in log  # they need _ext_testing, which the GPU build leaves out
    # The step limits add up to the 9 min 15 s deadline (doubled for the rehearsal on a CPU machine).
    assert sum(step_limits(log).values()) == 2 * 555, step_limits(log)


def step_limits(log):
    """{step: its limit in seconds} as the log announces them (``===== NAME (limit Ns): ...``)."""
    import re
    return {m.group(1): int(m.group(2)) for m in re.finditer(r'^===== (\w+) \(limit (\d+)s\)', log, re.M)}


def test_gpu_check_quick_dry_run(tmp_path):
    """``--quick``: build, the CUDA op tests and one benchmark case, with limits adding up to 4 minutes."""
    rc, log, out = dry_run(tmp_path, '--quick', WHEEL_DIR=wheel_dir(tmp_path))
    assert rc == 0, log[-6000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ok'] and summary['quick']
    assert [s['name'] for s in summary['steps']] == ['wheels', 'build', 'imports', 'op_tests', 'contmix_bench']
    assert (out / 'summary.md').read_text().startswith('# gpu_check (dry, quick): passed')
    assert 'test_contmix_cuda.py::test_cuda_matches_reference' in log
    assert 'test_cuda_binary.py::test_hot_kernels_make_no_per_tap_64bit_divisions' in log
    assert 'test_overlock_cuda.py' not in log
    limits = step_limits(log)
    assert sum(limits.values()) == 2 * 240 and limits['build'] == 2 * 130, limits


def test_gpu_check_names_missing_wheels(tmp_path):
    """Without the wheels and without a reachable registry the wheels step fails, naming each missing pin and the
    command that fetches them."""
    rc, log, _ = dry_run(tmp_path, '--quick', WHEEL_DIR=str(tmp_path / 'no_wheels'), TIME_LIMIT_S='25',
                         PIP_INDEX_URL='http://127.0.0.1:9/simple', PIP_CONFIG_FILE=os.devnull, PIP_RETRIES='0',
                         PIP_TIMEOUT='1')
    assert rc != 0
    assert 'still missing: mmengine==0.10.7' in log and 'tools/gpu_check.sh --fetch-wheels' in log, log[-3000:]
