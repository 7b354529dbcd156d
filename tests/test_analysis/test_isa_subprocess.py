"""``--isa best avx2`` runs the AVX2 setting in a child process that really runs with AVX2 forced: mmoverlock's
kernels, ATen and oneDNN all report AVX2 there, while this process's setting keeps the CPU's best."""
import json

import pytest
from _helpers import run_tool
from mmoverlock.analysis.measure import ISA_ENV_VARS, cpu_isa_flags
from mmoverlock.ops import available_backends

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow
#: How oneDNN's banner names AVX-512: "Intel AVX-512 ..." on AVX-512 CPUs, "Intel AVX10.1 ..." on those with AVX10
#: (Sapphire Rapids and later, e.g. "Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support").
AVX512_NAMES = ('AVX-512', 'AVX10')


def test_backbone_benchmark_per_isa_setting(tmp_path, monkeypatch):
    for var in ISA_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / 'bench' / 'backbone.json'
    run_tool(['tools/analysis_tools/benchmark_backbone.py', '--arch', 'xt', '--shape', 64, 64, '--batch-size', 1,
              '--iters', 1, '--warmup', 0, '--device', 'cpu', '--threads', 1, '--out', out, '--isa', 'best', 'avx2'],
             cwd=tmp_path)
    best = json.loads((tmp_path / 'bench' / 'best' / 'backbone.json').read_text())['machine']['isa']
    avx2 = json.loads((tmp_path / 'bench' / 'avx2' / 'backbone.json').read_text())['machine']['isa']
    assert best['setting'] == 'best' and not any(best['env'].values())
    assert avx2['setting'] == 'avx2' and avx2['env']['ONEDNN_MAX_CPU_ISA'] == 'AVX2'
    assert avx2['aten'] == 'AVX2' and 'AVX2' in avx2['onednn']
    assert not any(name in avx2['onednn'] for name in AVX512_NAMES)
    if 'cpu' in available_backends():
        assert avx2['mmoverlock'] == 'avx2' and best['mmoverlock'] == best['mmoverlock_supported'][-1]
    if 'avx512f' in cpu_isa_flags():  # the best setting is not capped
        assert best['aten'] == 'AVX512' and any(name in best['onednn'] for name in AVX512_NAMES)
    comparison = json.loads((tmp_path / 'bench' / 'backbone_isa.json').read_text())
    assert comparison['settings'] == ['best', 'avx2']
    step = next(r for r in comparison['rows'] if r['metric'] == 'training step s')
    assert step['values']['best'] > 0 and step['values']['avx2'] > 0
    assert step['across_settings']['avx2'] == step['values']['avx2'] / step['values']['best']
