"""timm's own feature-API tests, run unchanged on ``overlock_*``.

timm's ``tests/test_models.py`` (from the timm sdist, unpacked into the environment by ``tools/setup_env.sh``; the
``make test`` run collects it with ``-k overlock``) parametrises these three tests by the *module* a model is defined
in (its ``FEAT_INTER_FILTERS`` list of timm's own model files), which leaves out ``mmoverlock.models.classifier``.
Here the same test functions, loaded from that file, run on every OverLoCK variant.
"""
import importlib.util
import os
import os.path as osp
import sys

import pytest

import mmoverlock  # noqa: F401  (registers overlock_*)

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

#: Where setup_env.sh unpacks timm's tests (the environment's prefix), unless this variable names another folder.
TIMM_TESTS_ENV = 'MMOVERLOCK_TIMM_TESTS'
MODELS = ('overlock_xt', 'overlock_t', 'overlock_s', 'overlock_b')


def _timm_test_models():
    folder = os.environ.get(TIMM_TESTS_ENV) or osp.join(sys.prefix, 'timm-tests')
    path = osp.join(folder, 'tests', 'test_models.py')
    if not osp.isfile(path):
        raise FileNotFoundError(f'timm\'s tests/test_models.py is not at {path}; run tools/setup_env.sh (make setup), '
                                f'which unpacks it from the timm sdist, or set {TIMM_TESTS_ENV} to its folder')
    spec = importlib.util.spec_from_file_location('timm_tests_test_models', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timm_tests = _timm_test_models()


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_intermediates_features(model_name):
    timm_tests.test_model_forward_intermediates_features(model_name, batch_size=1)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_intermediates(model_name):
    timm_tests.test_model_forward_intermediates(model_name, batch_size=1)


@pytest.mark.parametrize('model_name', MODELS)
def test_prune_intermediate_layers_contract(model_name):
    timm_tests.test_prune_intermediate_layers_contract(model_name)
