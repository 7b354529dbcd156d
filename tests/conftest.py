"""Shared fixtures: paths of the ground-truth files produced from the authors' code."""
import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REFERENCE_DIR = osp.join(osp.dirname(REPO_ROOT), 'shared', 'reference')


@pytest.fixture(scope='session')
def reference_dir():
    if not osp.isdir(REFERENCE_DIR):
        pytest.fail(f'reference data not found at {REFERENCE_DIR} (expected ../shared/reference beside the repo)')
    return REFERENCE_DIR
