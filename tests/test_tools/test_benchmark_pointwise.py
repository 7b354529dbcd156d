"""The 1 x 1 conv benchmark reads every 1 x 1 shape off OverLoCK-T and times both backward paths at each."""
import json

import pytest

from _helpers import run_tool
from mmoverlock.analysis.measure import current_isa_setting

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def test_benchmark_pointwise_writes_results(tmp_path):
    from mmoverlock.models import OverLoCK
    from mmoverlock.ops.pointwise import PointwiseConv2d

    setting = current_isa_setting()
    run_tool(['tools/analysis_tools/benchmark_pointwise.py', '--size', '64', '--iters', '1', '--isa', setting,
              '--threads', '1', '--out', tmp_path / 'out'], cwd=tmp_path)
    payload = json.loads((tmp_path / 'out' / setting / 'pointwise.json').read_text())
    rows = payload['rows']
    # Every PointwiseConv2d of the backbone runs once per forward, and each shape is a row.
    modules = [m for m in OverLoCK(arch='t').modules() if isinstance(m, PointwiseConv2d)]
    assert sum(row['calls'] for row in rows) == len(modules)
    assert len({(r['C'], r['O'], r['H'], r['W']) for r in rows}) == len(rows)
    stage1 = {(r['C'], r['O']) for r in rows if (r['H'], r['W']) == (16, 16)}
    assert {(64, 256), (256, 64)} <= stage1  # stage 1's MLP at stride 4
    for row in rows:
        assert set(row['ms']) == {'train onednn', 'train products', 'backward onednn', 'backward products'}
        assert all(t > 0 for t in row['ms'].values())
        assert row['gflop_backward'] == pytest.approx(4 * row['C'] * row['O'] * row['H'] * row['W'] / 1e9)
    markdown = (tmp_path / 'out' / setting / 'pointwise.md').read_text()
    assert f'Command: `python tools/analysis_tools/benchmark_pointwise.py --size 64' in markdown
    assert '| 64 → 256 | 16×16 |' in markdown and 'Per training step of the model' in markdown
