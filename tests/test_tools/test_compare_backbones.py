"""The backbone comparison runs every model it names at a small size and writes ratios to ConvNeXt-T, with the
machine and the peak memory of each model's training step."""
import json

import pytest
from _helpers import REPO_ROOT, assert_one_switch_per_phase, run_tool

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def test_compare_backbones_writes_ratios(tmp_path):
    run_tool(['tools/analysis_tools/compare_backbones.py', '--sizes', '64', '--models', 'overlock', 'overlock-deploy',
              'overlock-authors', '--rounds', '1', '--threads', '1', '--no-flops', '--profile-sizes', '64',
              '--saved-sizes', '64', '--out-dir', tmp_path / 'out'],
             cwd=tmp_path)
    payload = json.loads((tmp_path / 'out' / 'results.json').read_text())
    summary = payload['summary']['64x64']
    assert set(summary) == {'convnext', 'overlock', 'overlock-deploy', 'overlock-authors'}
    assert summary['convnext']['infer_s_ratio'] == 1.0 and summary['convnext']['train_s_ratio'] == 1.0
    for name in ('overlock', 'overlock-deploy', 'overlock-authors'):
        row = summary[name]
        assert row['infer_s'] > 0
        assert abs(row['infer_s_ratio'] - row['infer_s'] / summary['convnext']['infer_s']) < 1e-9
    assert summary['overlock']['train_s'] > 0 and summary['overlock-deploy']['train_s'] is None  # inference only
    for name in ('convnext', 'overlock', 'overlock-authors'):  # measured in fresh processes
        assert summary[name]['train_mem_mib'] > 0
    # Dispatched operators (about a GPU's kernel launches), counted on a call after another: the eval form reuses its
    # folds then (mmoverlock.models.fold_cache), as many operators as the deploy form, a third fewer than the 3,700
    # of a call that folds; inference only for the deploy form.
    assert summary['overlock-deploy']['infer_ops'] == summary['overlock']['infer_ops']
    assert summary['overlock']['train_ops'] > summary['overlock']['infer_ops'] > 0
    assert summary['overlock-deploy']['train_ops'] is None
    assert payload['machine']['cpu'] and payload['machine']['torch_threads'] == 1
    markdown = (tmp_path / 'out' / 'results.md').read_text()
    assert 'overlock-deploy' in markdown and payload['machine']['cpu'] in markdown
    assert 'Command: `python tools/analysis_tools/compare_backbones.py --sizes 64' in markdown
    # The profiles (inference, training step) split each operator's self time by input shapes too: the heaviest
    # calls first, with their call counts, the shapes of one operator adding up to no more than its total.
    assert [p['phase'] for p in payload['profiles']] == ['infer', 'train_step']
    for prof in payload['profiles']:
        rows = prof['ops_by_shape']
        assert rows and all(row['calls'] >= 1 and row['s'] > 0 and row['input_shapes'][0] == '[' for row in rows)
        assert [row['s'] for row in rows] == sorted((row['s'] for row in rows), reverse=True)
        for op, total in prof['ops'].items():
            assert sum(row['s'] for row in rows if row['op'] == op) <= total + 1e-4 * len(rows)
        assert len({(row['op'], row['input_shapes']) for row in rows}) == len(rows)
        assert len({row['op'] for row in rows}) < len(rows)  # some operator in more than one row (shape)
    assert '| operator (self time) | input shapes | calls | s | ms per call |' in markdown
    saved = json.loads((tmp_path / 'out' / 'saved_64x64.json').read_text())['results']
    assert set(saved) == {'convnext', 'overlock', 'overlock-authors'}  # the trainable models
    for result in saved.values():
        assert result['saved_mib'] > 0 and result['backward_peak_mib'] > 0
        assert sum(g['bytes'] for g in result['by_block'].values()) == sum(e['bytes'] for e in result['entries'])
    assert '## overlock: saved by role' in (tmp_path / 'out' / 'saved_64x64.md').read_text()


@pytest.mark.parametrize('options', [['--isa', 'best'], ['--saved-sizes', '64']])
def test_cuda_refuses_the_cpu_only_options(options):
    import subprocess
    import sys
    tool = f'{REPO_ROOT}/tools/analysis_tools/compare_backbones.py'
    proc = subprocess.run([sys.executable, tool, '--device', 'cuda', *options], capture_output=True, text=True)
    assert proc.returncode == 2 and '--isa and --saved-sizes measure the CPU' in proc.stderr


def test_runner_switches_mode_once_per_phase(monkeypatch):
    """A timed call is the step alone: the model changes mode when the phase changes, as a training or test loop
    does, not on every call (``Module.train`` walks every submodule, far more of them in OverLoCK than in its
    peers)."""
    import sys
    monkeypatch.syspath_prepend(f'{REPO_ROOT}/tools/analysis_tools')
    monkeypatch.delitem(sys.modules, 'compare_backbones', raising=False)
    from compare_backbones import Runner
    runner = Runner('overlock', 64, 64)
    switches = assert_one_switch_per_phase(monkeypatch, runner.model, runner.infer, runner.train_step)
    runner.infer()
    assert switches == [False, True, False] and not any(m.training for m in runner.model.modules())


def test_times_split_into_fixed_and_per_pixel_parts(monkeypatch, tmp_path):
    """With several sizes the report splits each model's time into a per-call part and a part per megapixel, with
    ratios to ConvNeXt-T: here OverLoCK pays 0.2 s more per call at the same cost per pixel."""
    import sys
    monkeypatch.syspath_prepend(f'{REPO_ROOT}/tools/analysis_tools')
    monkeypatch.delitem(sys.modules, 'compare_backbones', raising=False)
    import compare_backbones as tool
    sizes = {}
    for side in (128, 256, 512):
        megapixels = side * side / 1e6
        sizes[f'{side}x{side}'] = {metric: {} for metric, _, _ in tool.METRICS}
        sizes[f'{side}x{side}']['infer_s'] = {'convnext': 0.05 + megapixels, 'overlock': 0.25 + megapixels}
    results = dict(models=['convnext', 'overlock'], sizes=sizes, batch=1)
    fits = tool.scaling(results)
    assert set(fits) == {'infer_s'}  # no training times given
    assert fits['infer_s']['overlock']['fixed_s'] == pytest.approx(0.25)
    assert fits['infer_s']['overlock']['fixed_s_ratio'] == pytest.approx(5.0)
    assert fits['infer_s']['overlock']['per_megapixel_s_ratio'] == pytest.approx(1.0)
    assert fits['infer_s']['overlock']['fixed_share_at_largest'] == pytest.approx(0.25 / (0.25 + 512**2 / 1e6))
    one_size = dict(results, sizes={'512x512': sizes['512x512']})
    assert tool.scaling(one_size) == {}
