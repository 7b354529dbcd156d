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

from _helpers import CPU_ONLY, REPO_ROOT

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


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / 'out'
    # the rehearsal of a machine without a GPU, also where this suite runs on one
    env = dict(os.environ, WHEEL_DIR=wheel_dir(tmp_path), PYTHON=sys.executable, **CPU_ONLY)
    proc = subprocess.run(['bash', SCRIPT, '--dry-run', str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    log = (out / 'gpu_check.log').read_text() if (out / 'gpu_check.log').exists() else proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ok'] and summary['mode'] == 'dry'
    assert [s['name'] for s in summary['steps']] == [
        'wheels', 'build', 'imports', 'op_tests', 'model_tests', 'contmix_bench', 'backbone']
    assert summary['backbone']['loss_finite']
    assert (out / 'summary.md').read_text().startswith('# gpu_check (dry): passed')
    # The collected GPU tests are listed in the log: the op tests and the backbone tests on CUDA.
    assert 'test_contmix_cuda.py::test_cuda_matches_reference' in log
    assert 'test_overlock_cuda.py::test_cuda_float64_matches_authors' in log
