"""The ContMix benchmark times every method, measures memory in subprocesses and writes the roofline figures."""
import json

import pytest

from _helpers import run_tool
from mmoverlock.analysis.measure import current_isa_setting
from mmoverlock.ops import available_backends
from mmoverlock.testing.contmix_baselines import contmix_cost

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def test_benchmark_contmix_writes_results(tmp_path):
    case = (1, 2, 9, 11, 4, 3)
    methods = ['fused-cpu' if 'cpu' in available_backends() else 'fused-torch', 'unfold']
    run_tool(['tools/analysis_tools/benchmark_contmix.py', '--device', 'cpu', '--cases', ','.join(map(str, case)),
              '--methods', ','.join(methods), '--budget', '0', '--out', tmp_path / 'out'], cwd=tmp_path)
    payload = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert [r['method'] for r in payload['results']] == methods
    assert payload['machine']['copy_bandwidth_gbs'] > 0
    assert payload['machine']['isa']['setting'] == current_isa_setting()
    assert all(row['fwd_runs'] == row['fwd_bwd_runs'] == 1 for row in payload['results'])  # --budget 0: one run
    for row in payload['results']:
        assert row['fwd_ms'] > 0 and row['fwd_bwd_ms'] > 0
        assert row['fwd_peak_mib'] >= 0 and row['fwd_bwd_peak_mib'] > 0  # measured in a subprocess
        roof = row['fwd_bwd_roofline']
        # 198 pixels x 9 taps: 3 x 198*9*4 multiply-adds, 2 x 198*9 exps, 198*(3*9 + 5*4)*4 bytes.
        assert {k: roof[k] for k in ('multiply_adds', 'exps', 'bytes')} == dict(multiply_adds=21384, exps=3564,
                                                                                 bytes=37224)
        assert roof['gflops'] > 0 and 0 < roof['copy_fraction']
    markdown = (tmp_path / 'out' / 'results.md').read_text()
    assert 'Produced by `python tools/analysis_tools/benchmark_contmix.py --device cpu' in markdown
    assert 'B1·G2·9×11·C4·K3 | unfold |' in markdown


def test_contmix_cost_at_the_default_case():
    # B2·G8·50×84·C16·K13: 67200 pixels, 169 taps.
    forward = contmix_cost((2, 8, 50, 84, 16, 13), backward=False)
    both = contmix_cost((2, 8, 50, 84, 16, 13), backward=True)
    assert forward == {'multiply_adds': 67200 * 169 * 16, 'exps': 67200 * 169, 'bytes': 67200 * (169 + 32) * 4}
    assert both['multiply_adds'] == 3 * forward['multiply_adds']  # 545 M
    assert both['exps'] == 2 * forward['exps']  # the softmax is recomputed in backward
    assert both['bytes'] == 67200 * (3 * 169 + 5 * 16) * 4  # 158 MB


def test_cuda_traffic_model_at_the_default_case(tmp_path):
    """The CUDA kernels' traffic model, by hand at the default case: the forward moves its minimum and the per-pixel
    log-sum-exp it saves; the backward is one pass that reads the saved out instead of recomputing the forward
    (within 1.3x of its minimum); the deterministic mode adds the fixed-order gather of grad_rpb. No case or dtype is
    modelled below the op's minimum. --traffic-only writes the table without timing."""
    from mmoverlock.testing.contmix_baselines import contmix_cuda_traffic
    case = (2, 8, 50, 84, 16, 13)
    P, T, C = 2 * 8 * 50 * 84, 169, 16
    model = contmix_cuda_traffic(case)
    assert model['forward_min'] == P * (T + 2 * C) * 4
    assert model['forward'] == {'forward': P * (T + 2 * C) * 4 + P * 4}  # logits, values in; out, lse out
    assert model['backward_min'] == P * (2 * T + 3 * C) * 4
    # grad_out, out, values, logits, lse in; grad_weights, grad_value out.
    assert model['backward'] == {'backward': P * (2 * T + 4 * C) * 4 + P * 4}
    assert model['backward_ratio'] <= 1.3
    deterministic = contmix_cuda_traffic(case, deterministic=True)['backward']
    # The logit gradients read once more, and a [K, 2K-1] table per plane row written and read back.
    assert deterministic == {'backward': P * (2 * T + 4 * C) * 4 + P * 4, 'grad_rpb': P * T * 4 + 2 * 800 * 13 * 25 * 4}
    run_tool(['tools/analysis_tools/benchmark_contmix.py', '--traffic-only', '--out', tmp_path / 'traffic'],
             cwd=tmp_path)
    rows = json.loads((tmp_path / 'traffic' / 'traffic.json').read_text())['rows']
    assert rows and all(r['forward_ratio'] >= 1 and r['backward_ratio'] >= 1 for r in rows)
    table = (tmp_path / 'traffic' / 'traffic.md').read_text()
    assert '| B2·G8·50×84·C16·K13 | 4 | no | 54.3 | 54.0 | 1.00 | 108.3 |' in table


def test_isa_settings_need_the_cpu(tmp_path):
    with pytest.raises(AssertionError, match='--isa sets the instruction sets of the CPU libraries'):
        run_tool(['tools/analysis_tools/benchmark_contmix.py', '--device', 'cuda', '--isa', 'avx2'], cwd=tmp_path)
