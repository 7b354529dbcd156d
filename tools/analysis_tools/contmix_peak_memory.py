"""Peak extra CPU memory of one call of a ContMix method, measured in this (fresh) process; prints one JSON line.

The figure is :mod:`mmoverlock.analysis.measure`'s one definition of peak memory (resident-set growth above the
resident set before the call, after one warm-up call, glibc returning freed memory to the OS). That allocator setting
slows allocations, so ``tools/analysis_tools/benchmark_contmix.py`` measures each method here, in a fresh process
(through :func:`contmix_call`), and times the methods in its own process, without it.

Example::

    python tools/analysis_tools/contmix_peak_memory.py --case 2,8,50,84,16,13 --method fused-cpu --backward
"""
import argparse
import json

import torch

from mmoverlock.analysis.measure import peak_memory_mib, set_threads
from mmoverlock.testing.contmix_baselines import contmix_method, random_inputs


def contmix_call(case, method, backward):
    """One forward (and backward) of ``method`` on fixed random inputs of ``case`` = (B, G, H, W, C, K)."""
    fn = contmix_method(method, 'cpu')
    inputs = random_inputs(tuple(case))
    K = case[5]

    def call():
        out = fn(*inputs, K)
        return torch.autograd.grad(out, inputs, torch.ones_like(out)) if backward else out

    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--case', required=True, help='B,G,H,W,C,K')
    parser.add_argument('--method', required=True, help='fused-<backend>[:<isa>], unfused or unfold')
    parser.add_argument('--backward', action='store_true', help='forward + backward (default: forward alone)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    try:
        case = tuple(int(x) for x in args.case.split(','))
    except ValueError:
        case = ()
    if len(case) != 6:
        parser.error(f'--case must be six integers B,G,H,W,C,K, got {args.case!r}')
    set_threads(args.threads)
    peak = peak_memory_mib(contmix_call(case, args.method, args.backward), 'cpu', warmup=1)['peak_mib']
    print(json.dumps({'peak_extra_mib': peak}))


if __name__ == '__main__':
    main()
