"""Shared fixtures: the ground-truth files produced from the authors' code (``tests/data/reference``)."""
import gzip
import json
import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REFERENCE_DIR = osp.join(REPO_ROOT, 'tests', 'data', 'reference')


@pytest.fixture(scope='session')
def reference_dir():
    return REFERENCE_DIR


# ---------------------------------------------------------------- configs and tools (tests/test_configs, tests/test_tools)
@pytest.fixture(scope='session')
def shapes_workdir(tmp_path_factory):
    """A working directory with ``data/generated``: a small copy of the bundled synthetic data (8 train, 4 val,
    2 held-out images per set, 128 px), so the smoke configs run unchanged from there (their data roots are
    relative, like mmdet's ``data/coco/``)."""
    import _helpers  # noqa: F401  (puts tools/ on sys.path)
    from generate_data import generate

    workdir = tmp_path_factory.mktemp('shapes')
    generate(str(workdir / 'data' / 'generated'), size=128, num_train=8, num_val=4, num_held_out=2, seed=1)
    return workdir


@pytest.fixture(scope='session')
def official_manifest(reference_dir):
    """The authors' state-dict layouts (key → shape) and parameter counts, per task / variant / form."""
    with gzip.open(osp.join(reference_dir, 'official_state_dict_manifest.json.gz'), 'rt') as f:
        return json.load(f)
