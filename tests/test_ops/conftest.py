"""The test-only operators of ``mmoverlock._ext_testing`` (the CPU drivers of the CUDA kernels' bodies)."""
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
