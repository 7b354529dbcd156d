"""The backbone comparison runs every model it names at a small size and writes ratios to ConvNeXt-T."""
import json

from _helpers import run_tool


def test_compare_backbones_writes_ratios(tmp_path):
    run_tool(['tools/analysis_tools/compare_backbones.py', '--sizes', '64', '--models', 'overlock', 'overlock-authors',
              '--rounds', '1', '--threads', '1', '--no-memory', '--no-flops', '--profile-sizes', '--out-dir',
              tmp_path / 'out'], cwd=tmp_path)
    payload = json.loads((tmp_path / 'out' / 'results.json').read_text())
    summary = payload['summary']['64x64']
    assert set(summary) == {'convnext', 'overlock', 'overlock-authors'}
    assert summary['convnext']['infer_s_ratio'] == 1.0 and summary['convnext']['train_s_ratio'] == 1.0
    for name in ('overlock', 'overlock-authors'):
        row = summary[name]
        assert row['infer_s'] > 0 and row['train_s'] > 0
        assert abs(row['infer_s_ratio'] - row['infer_s'] / summary['convnext']['infer_s']) < 1e-9
    assert 'overlock-authors' in (tmp_path / 'out' / 'results.md').read_text()
