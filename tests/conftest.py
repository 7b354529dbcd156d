"""Shared fixtures: the ground-truth files produced from the authors' code (``tests/data/reference``) and a small copy
of the bundled synthetic data for the config and tool tests.

Nothing beyond torch is imported at module level, so ``tests/test_ops`` also runs where OpenMMLab is not installed.
"""
import gzip
import json
import os.path as osp

import pytest


@pytest.fixture(scope='session')
def reference_dir():
    return osp.join(osp.dirname(osp.abspath(__file__)), 'data', 'reference')


@pytest.fixture(scope='session')
def official_manifest(reference_dir):
    """The authors' state-dict layouts (key → shape) and parameter counts, per task / variant / form."""
    with gzip.open(osp.join(reference_dir, 'official_state_dict_manifest.json.gz'), 'rt') as f:
        return json.load(f)


@pytest.fixture(scope='session')
def shapes_workdir(tmp_path_factory):
    """A working directory with ``data/generated``: a small copy of the bundled synthetic data (8 train, 4 val,
    2 held-out images per set, 128 px) written by ``tools/misc/generate_data.py``, so the smoke configs run unchanged
    from there (their data roots are relative, like mmdet's ``data/coco/``)."""
    from _helpers import run_tool

    workdir = tmp_path_factory.mktemp('shapes')
    run_tool(['tools/misc/generate_data.py', '--out', workdir / 'data' / 'generated', '--size', 128, '--num-train', 8,
              '--num-val', 4, '--num-held-out', 2, '--seed', 1], cwd=workdir)
    return workdir
