"""The repository's tracked files stay under 20 MiB, so that a clone is quick and the tree (with the wheels it
carries) fits the 64 MiB a GPU machine takes in one transfer (``tools/gpu_check.sh``). Benchmark runs add files
on every commit that records one; this test says when they have used up the room.
"""
import os.path as osp
import shutil
import subprocess

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
LIMIT_BYTES = 20 << 20


def _tracked_files():
    if shutil.which('git') is None:
        pytest.skip('git is not installed')
    result = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True)
    if result.returncode != 0:
        pytest.skip(f'{ROOT} is not a git checkout (an installed copy)')
    return [name for name in result.stdout.decode().split('\0') if name]


def test_tracked_files_total_at_most_20_mib():
    sizes = {name: osp.getsize(osp.join(ROOT, name)) for name in _tracked_files() if osp.isfile(osp.join(ROOT, name))}
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    assert total <= LIMIT_BYTES, (
        f'tracked files total {total / 2**20:.2f} MiB, over {LIMIT_BYTES >> 20} MiB; largest: '
        + ', '.join(f'{name} ({size / 2**20:.2f} MiB)' for name, size in largest))
