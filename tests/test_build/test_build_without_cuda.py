"""The extension builds on a machine without a CUDA toolkit: the CPU kernels only, said in one line. A build without
MMOVERLOCK_BUILD_TESTING (a release install) contains no test-only module or operator.

The torch wheel of the set-up is a CUDA build, so the check that matters is the toolkit: a ``CUDA_HOME`` that is no
toolkit root (no ``bin/nvcc``, or no headers beside it) must not stop the build. The test builds a copy of the package in a temporary folder with such a
``CUDA_HOME`` and loads the result in a fresh interpreter.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

# Builds the whole extension in a subprocess (minutes on 2 cores): left out of `make test-fast`.
pytestmark = pytest.mark.slow

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_build_with_toolkit_hidden(tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(osp.join(REPO_ROOT, 'mmoverlock'), src / 'mmoverlock',
                    ignore=shutil.ignore_patterns('*.so', '__pycache__'))
    shutil.copytree(osp.join(REPO_ROOT, 'requirements'), src / 'requirements')  # setup.py reads its requirements
    for name in ('setup.py', 'README.md'):
        shutil.copy(osp.join(REPO_ROOT, name), src / name)
    # A CUDA_HOME that is no toolkit: runtime libraries and an nvcc wrapper script, but no headers (as torch's guess
    # of /usr/local from a /usr/local/bin/nvcc wrapper is); nvcc must not be run, and the build must not fail.
    fake_cuda = tmp_path / 'not_a_toolkit'
    (fake_cuda / 'lib64').mkdir(parents=True)
    (fake_cuda / 'bin').mkdir()
    (fake_cuda / 'bin' / 'nvcc').write_text('#!/bin/sh\necho "nvcc was run" >&2\nexit 1\n')
    (fake_cuda / 'bin' / 'nvcc').chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ('FORCE_CUDA', 'TORCH_CUDA_ARCH_LIST', 'MMOVERLOCK_BUILD_TESTING')}
    env.update(CUDA_HOME=str(fake_cuda), MAX_JOBS=env.get('MAX_JOBS', str(os.cpu_count() or 1)))
    build = subprocess.run([sys.executable, 'setup.py', 'build_ext', '--inplace'], cwd=src, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-4000:]
    assert 'nvcc was run' not in build.stdout
    if torch.version.cuda is not None:
        assert (f'mmoverlock: no CUDA toolkit (bin/nvcc and include/cuda_runtime.h) under CUDA_HOME={fake_cuda}; '
                'compiling the CPU kernels only') in build.stdout

    # The built library is the CPU-only one, without the test-only drivers, and its operator agrees with the
    # pure-torch path. (The drivers' absence is checked on the build's files and registered operators: an import
    # lookup of mmoverlock._ext_testing could find the editable install's copy in the development checkout.)
    assert not list((src / 'mmoverlock').glob('_ext_testing*'))
    probe = ('import torch, mmoverlock._ext as ext; from mmoverlock.ops import contmix_aggregate;'
             'assert ext.__file__.startswith(%r), ext.__file__;' % str(src) +
             'assert tuple(ext.backends) == ("cpu",), ext.backends;'
             'assert hasattr(torch.ops.mmoverlock, "contmix_forward");'
             'assert not hasattr(torch.ops.mmoverlock_testing, "contmix_bodies_forward");'
             'assert not hasattr(torch.ops.mmoverlock_testing, "depthwise_bodies_forward");'
             'g = torch.Generator().manual_seed(0);'
             'w = torch.randn(1, 2, 9, 11, 25, dtype=torch.float64, generator=g);'
             'v = torch.randn(1, 2, 9, 11, 4, dtype=torch.float64, generator=g);'
             'b = torch.randn(2, 9, 9, dtype=torch.float64, generator=g);'
             'a = contmix_aggregate(w, v, 5, rpb=b, softmax=True, backend="cpu");'
             'r = contmix_aggregate(w, v, 5, rpb=b, softmax=True, backend="torch");'
             'assert (a - r).abs().max() < 1e-12, (a - r).abs().max();'
             'print("ok")')
    run = subprocess.run([sys.executable, '-c', probe], cwd=src, env=dict(env, PYTHONPATH=str(src)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith('ok'), run.stdout[-4000:]
