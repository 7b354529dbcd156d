"""Fixtures of the operator tests: the test-only operators of ``mmoverlock._ext_testing`` (the CPU drivers of the CUDA
kernels' bodies), and each CPU kernel variant (instruction set) this CPU runs."""
import importlib

import pytest
import torch

from mmoverlock.ops import available_backends


@pytest.fixture(scope='session')
def testing_ops():
    """``torch.ops.mmoverlock_testing`` after importing ``mmoverlock._ext_testing``, which setup.py builds beside
    ``mmoverlock._ext`` only with ``MMOVERLOCK_BUILD_TESTING=1`` (as ``tools/setup_env.sh`` does). Skips where the
    extension itself is not built; fails, saying how to build it, where only the testing module is missing."""
    if 'cpu' not in available_backends():
        pytest.skip('mmoverlock._ext is not built (pip install -e .)')
    try:
        importlib.import_module('mmoverlock._ext_testing')
    except ImportError as err:
        pytest.fail(f'mmoverlock._ext_testing is missing ({err}): the CPU drivers of the CUDA bodies are built only '
                    'with MMOVERLOCK_BUILD_TESTING=1 (tools/setup_env.sh sets it; by hand: '
                    'MMOVERLOCK_BUILD_TESTING=1 python setup.py build_ext --inplace)')
    return torch.ops.mmoverlock_testing


CPU_CAPABILITY_ENV = 'MMOVERLOCK_CPU_CAPABILITY'


@pytest.fixture(params=['default', 'avx2', 'avx512'])
def cpu_capability(request, monkeypatch):
    """Runs the test once per CPU kernel variant (ContMix's and the depthwise op's, one selection) that this CPU
    supports, selected through ``MMOVERLOCK_CPU_CAPABILITY``; the others skip, saying what the CPU lacks."""
    if 'cpu' not in available_backends():
        pytest.skip('mmoverlock._ext is not built (pip install -e .)')
    import mmoverlock._ext as ext
    if request.param not in ext.cpu_capabilities():
        pytest.skip(f'this CPU lacks {request.param}')
    monkeypatch.setenv(CPU_CAPABILITY_ENV, request.param)
    assert ext.cpu_capability() == request.param
    return request.param
