"""The measuring module: the order of interleaved rounds, the summaries, the one peak-memory definition (in this
process and in a fresh one), the instruction-set settings and the result writers. No assertion depends on speed."""
import json
import os

import pytest
import torch

from mmoverlock.analysis.measure import (ISA_ENV_VARS, Timing, allocator_environment, command_line,
                                         current_isa_setting, describe_machine, dispatched_ops, interleaved_times,
                                         isa_environment, isa_output, machine_info, peak_memory_in_fresh_process,
                                         peak_memory_mib, record, rounds_within, saved_activations,
                                         saved_activations_in_fresh_process, set_threads, size_scaling,
                                         write_isa_comparison, write_saved_activations)

MIB_200MB = 200e6 / 2**20  # a float32 tensor of 50 M elements


def _recorder(calls, name):
    return lambda: calls.append(name)


def test_rounds_interleave_after_warmup():
    calls = []
    timings = interleaved_times({n: _recorder(calls, n) for n in 'abc'}, rounds=2, warmup=1)
    assert calls == list('abc' * 3)  # one warm-up round, then two timed rounds, each candidate in turn
    assert list(timings) == list('abc')
    assert all(len(t.wall_s) == len(t.cpu_s) == 2 and t.warmup_s is not None for t in timings.values())


def test_candidates_with_fewer_rounds_sit_out_the_later_ones():
    calls = []
    timings = interleaved_times({n: _recorder(calls, n) for n in 'abc'}, rounds=dict(a=1, b=2, c=3), warmup=0)
    assert calls == list('abc' 'bc' 'c')
    assert [len(timings[n].wall_s) for n in 'abc'] == [1, 2, 3]


def test_timing_summary():
    timing = Timing(wall_s=[3.0, 1.0, 2.0, 6.0], cpu_s=[1.0, 1.0, 4.0, 4.0])
    summary = timing.summary()
    assert summary['median_s'] == 2.5 and summary['min_s'] == 1.0 and summary['max_s'] == 6.0
    assert summary['mean_s'] == 3.0 and summary['cpu_median_s'] == 2.5 and summary['rounds'] == 4
    assert summary['spread'] == pytest.approx((6.0 - 1.0) / 2.5)


def test_rounds_within_a_budget():
    assert rounds_within(1.0, 0.3, max_rounds=7) == 3
    assert rounds_within(0.0, 5.0, max_rounds=7) == 1  # always one run
    assert rounds_within(100.0, 1.0, max_rounds=7) == 7
    assert rounds_within(1.0, 0.0, max_rounds=4) == 4


@pytest.mark.parametrize('kwargs, match', [
    (dict(candidates={}), 'candidates is empty'),
    (dict(candidates={'a': 1}), r"candidates\['a'\] is int"),
    (dict(candidates={'a': print}, rounds=0), 'rounds must be'),
    (dict(candidates={'a': print}, rounds={'b': 1}), 'rounds must be'),
    (dict(candidates={'a': print}, warmup=-1), 'warmup must be'),
    (dict(candidates={'a': print}, warmup=0, budget_s=1.0), 'budget_s'),
])
def test_bad_timing_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        interleaved_times(**kwargs)


def test_threads_setting():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match='threads must be a positive integer'):
            set_threads(bad)


def _allocate(n):
    return torch.ones(n)


def test_size_scaling_splits_fixed_and_per_pixel_time():
    """Times that are 0.2 s per call plus 0.5 s per megapixel give back those two parts; a noisy point shows as the
    largest residual."""
    pixels = [128**2, 256**2, 384**2, 512**2]
    fit = size_scaling(pixels, [0.2 + 0.5 * p / 1e6 for p in pixels])
    assert fit.fixed_s == pytest.approx(0.2) and fit.per_megapixel_s == pytest.approx(0.5)
    assert fit.max_residual_s == pytest.approx(0, abs=1e-12) and fit.at(1e6) == pytest.approx(0.7)
    noisy = size_scaling(pixels, [0.2 + 0.5 * p / 1e6 + (0.01 if p == 256**2 else 0) for p in pixels])
    assert 0.005 < noisy.max_residual_s < 0.01


@pytest.mark.parametrize('pixels, seconds, match', [([1e6, 1e6], [1.0, 2.0], 'two or more distinct sizes'),
                                                    ([1e6, 2e6], [1.0], 'same length')])
def test_size_scaling_rejects_bad_input(pixels, seconds, match):
    with pytest.raises(ValueError, match=match):
        size_scaling(pixels, seconds)


def test_peak_memory_of_a_200mb_tensor():
    kept = peak_memory_mib(lambda: _allocate(50_000_000))
    assert 0.9 * MIB_200MB < kept['peak_mib'] < 1.3 * MIB_200MB and kept['baseline_mib'] > 0
    # Allocated and freed inside the call: the peak still counts it.
    transient = peak_memory_mib(lambda: _allocate(50_000_000).sum())
    assert 0.9 * MIB_200MB < transient['peak_mib'] < 1.3 * MIB_200MB
    assert peak_memory_mib(lambda: None)['peak_mib'] < 0.1 * MIB_200MB


@pytest.mark.slow  # a fresh Python process per measurement (29 s on 2 loaded cores)
def test_peak_memory_in_a_fresh_process(tmp_path):
    factory = tmp_path / 'factory.py'
    factory.write_text('import torch\n\ndef make(n):\n    return lambda: torch.ones(n)\n')
    result = peak_memory_in_fresh_process(f'{factory}:make', dict(n=50_000_000), threads=1)
    assert 0.9 * MIB_200MB < result['peak_mib'] < 1.3 * MIB_200MB
    with pytest.raises(RuntimeError, match='failed in its subprocess'):
        peak_memory_in_fresh_process(f'{factory}:no_such_factory', {})


_SAVED_FACTORY = """import torch
from torch import nn


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, ), 2.))

    def forward(self, x):
        return x * self.weight


def make(n):
    model = nn.Sequential(Scale(), nn.Sequential(nn.GELU()))
    x = torch.randn(n, requires_grad=True)
    return model, lambda: model(x).sum(), [x]
"""


def test_saved_activations_by_module(tmp_path):
    """``x * w`` saves x (an input) and w (a parameter): neither counts; GELU saves the product, charged to it."""
    factory = tmp_path / 'factory.py'
    factory.write_text(_SAVED_FACTORY)
    n = 25_000_000
    result = saved_activations_in_fresh_process(f'{factory}:make', dict(n=n), threads=1, group_depth=1)
    mib = n * 4 / 2**20
    assert result['saved_mib'] == mib
    assert [(e['module'], e['type'], e['shape'], e['block'], e['role']) for e in result['entries']] == [
        ('1.0', 'GELU', [n], '1', 'Sequential.0 (GELU)')]
    assert result['by_block'] == {'1': dict(bytes=n * 4, tensors=1)}
    # the product stays for the backward; GELU's output lived until the sum
    assert 0.9 * mib < result['kept_mib'] < 1.3 * mib and 1.8 * mib < result['forward_peak_mib'] < 2.5 * mib
    assert result['backward_peak_mib'] >= result['kept_mib']
    write_saved_activations(str(tmp_path / 'saved'), 'test', 'cmd', machine_info('cpu'), dict(chain=result))
    markdown = (tmp_path / 'saved.md').read_text()
    assert '`Sequential.0 (GELU)` | 95.4 | 100.0% | 1 |' in markdown
    assert json.loads((tmp_path / 'saved.json').read_text())['results']['chain']['saved_mib'] == mib
    with pytest.raises(ValueError, match='group_depth must be a positive int'):
        saved_activations(torch.nn.Identity(), lambda: None, group_depth=0)


def test_isa_settings_from_the_environment():
    assert current_isa_setting({}) == 'best'
    avx2 = isa_environment('avx2', {'PATH': '/bin'})
    assert avx2['PATH'] == '/bin' and avx2['ONEDNN_MAX_CPU_ISA'] == 'AVX2'
    assert avx2['MMOVERLOCK_CPU_CAPABILITY'] == 'avx2' and current_isa_setting(avx2) == 'avx2'
    best = isa_environment('best', avx2)
    assert not set(ISA_ENV_VARS) & set(best) and current_isa_setting(best) == 'best'
    assert current_isa_setting({'MMOVERLOCK_CPU_CAPABILITY': 'avx2'}) == 'custom'
    with pytest.raises(ValueError, match="unknown ISA setting 'sse'"):
        isa_environment('sse')


def test_allocator_environment_is_recorded(monkeypatch):
    """A run with glibc's trimming turned off (no page faults on reused maps) must say so next to its figures."""
    assert allocator_environment({'PATH': '/bin', 'MALLOC_ARENA_MAX': ''}) == {}
    assert allocator_environment({'MALLOC_TRIM_THRESHOLD_': '1', 'GLIBC_TUNABLES': 'glibc.malloc.mxfast=0',
                                  'LD_PRELOAD': 'libjemalloc.so', 'HOME': '/root'}) == {
        'GLIBC_TUNABLES': 'glibc.malloc.mxfast=0', 'LD_PRELOAD': 'libjemalloc.so', 'MALLOC_TRIM_THRESHOLD_': '1'}
    for var in allocator_environment():  # whatever the machine running the tests sets
        monkeypatch.delenv(var)
    assert 'allocator defaults;' in describe_machine(machine_info('cpu', probe_onednn=False))
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '17179869184')
    info = machine_info('cpu', probe_onednn=False)
    assert info['allocator'] == {'MALLOC_TRIM_THRESHOLD_': '17179869184'}
    assert 'allocator MALLOC_TRIM_THRESHOLD_=17179869184;' in describe_machine(info)


def test_isa_output_paths():
    assert isa_output('out/results', None) == 'out/results'
    assert isa_output('out/results', 'avx2') == os.path.join('out/results', 'avx2')
    assert isa_output('out/bench.json', 'best') == os.path.join('out', 'best', 'bench.json')


def test_command_line_is_relative_to_the_repository():
    import mmoverlock
    script = os.path.join(os.path.dirname(os.path.dirname(mmoverlock.__file__)), 'tools', 'x.py')
    assert command_line(script, ['--a', 'b c']) == "python tools/x.py --a 'b c'"


def test_isa_comparison_table(tmp_path):
    machine = dict(cpu='CPU X', cores=2, torch_threads=2, load_average=[0.0, 0.0, 0.0], torch='t', python='p',
                   date='d', isa=dict(setting='best', cpu_flags=['avx2'], mmoverlock='avx512', aten='AVX512',
                                      onednn=None))
    records = {'best': [record('m', 'time s', 2.0, 1.0)], 'avx2': [record('m', 'time s', 5.0, 2.5)]}
    payload = write_isa_comparison(str(tmp_path / 'cmp'), 'T', 'python x.py', records,
                                   {'best': machine, 'avx2': machine}, baseline='B')
    assert payload['rows'][0]['across_settings'] == {'avx2': 2.5}
    assert json.loads((tmp_path / 'cmp.json').read_text())['settings'] == ['best', 'avx2']
    text = (tmp_path / 'cmp.md').read_text()
    assert '| m | time s | 2 (1.00×) | 5 (2.50×) | 2.50× |' in text and 'CPU X' in text


def test_dispatched_ops_counts_forward_and_backward_operators():
    x = torch.randn(4, 3, requires_grad=True)
    forward = dispatched_ops(lambda: (x * 2).sum())
    assert forward['by_operator'] == {'aten.mul': 1, 'aten.sum': 1} and forward['total'] == 2
    both = dispatched_ops(lambda: (x * 2).sum().backward())
    assert both['total'] > forward['total'] and both['by_operator']['aten.mul'] >= 2  # the backward's mul too
