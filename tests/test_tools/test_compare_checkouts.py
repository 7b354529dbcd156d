"""The two-checkout comparison runs each checkout's own code in fresh processes and pairs their ratios round by
round."""
import json
import statistics

import pytest
from _helpers import REPO_ROOT, run_tool

# Runs command-line tools and whole models: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def test_compare_checkouts_pairs_the_ratios_of_each_round(tmp_path):
    out = tmp_path / 'out' / 'same'
    log = run_tool(['tools/analysis_tools/compare_checkouts.py', '--baseline', REPO_ROOT, '--candidate', REPO_ROOT,
                    '--size', '64', '--rounds', '2', '--calls', '1', '--threads', '1', '--out', out], cwd=tmp_path)
    assert log.count('round ') == 2
    payload = json.loads(out.with_suffix('.json').read_text())
    assert payload['revisions']['baseline'] == payload['revisions']['candidate']
    assert len(payload['rounds']) == 2
    for phase, summary in payload['summary'].items():
        base = [r['baseline'][phase]['overlock'] / r['baseline'][phase]['convnext'] for r in payload['rounds']]
        cand = [r['candidate'][phase]['overlock'] / r['candidate'][phase]['convnext'] for r in payload['rounds']]
        assert summary['baseline_rounds'] == pytest.approx(base) and min(base) > 0
        assert summary['candidate'] == pytest.approx(statistics.median(cand))
        assert summary['paired'] == pytest.approx(statistics.median(c / b for c, b in zip(cand, base)))
    markdown = out.with_suffix('.md').read_text()
    assert 'Command: `python tools/analysis_tools/compare_checkouts.py --baseline' in markdown
    assert payload['machine']['cpu'] in markdown and '| training step |' in markdown


def test_compare_checkouts_needs_a_baseline_and_an_output(tmp_path):
    with pytest.raises(AssertionError, match='--baseline and --out are required'):
        run_tool(['tools/analysis_tools/compare_checkouts.py', '--size', '32'], cwd=tmp_path)


def test_compare_checkouts_per_isa_setting(tmp_path):
    """``--isa best avx2``: each setting's rounds in its own environment (the avx2 workers with AVX2 forced, in a
    child of the tool) into OUT/<setting>, and a comparison of the settings beside them."""
    out = tmp_path / 'out' / 'isa'
    run_tool(['tools/analysis_tools/compare_checkouts.py', '--baseline', REPO_ROOT, '--candidate', REPO_ROOT,
              '--size', '64', '--rounds', '1', '--calls', '1', '--threads', '1', '--isa', 'best', 'avx2', '--out', out],
             cwd=tmp_path)
    settings = {s: json.loads((out / f'{s}.json').read_text()) for s in ('best', 'avx2')}
    assert {s: p['machine']['isa']['setting'] for s, p in settings.items()} == {'best': 'best', 'avx2': 'avx2'}
    assert settings['avx2']['machine']['isa']['mmoverlock'] == 'avx2'
    comparison = json.loads((out / 'isa_comparison.json').read_text())
    assert comparison['settings'] == ['best', 'avx2']
    rows = {(r['item'], r['metric']): r['values'] for r in comparison['rows']}
    for setting, payload in settings.items():
        assert rows[('training step', 'candidate ÷ baseline')][setting] == pytest.approx(
            payload['summary']['train_step']['paired'])
