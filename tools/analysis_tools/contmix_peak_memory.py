"""Peak extra CPU memory of one call of a ContMix method, measured in this (fresh) process; prints one JSON line.

torch has no allocator statistics on the CPU, so the resident set is measured: glibc's mmap threshold is lowered to
64 KiB first (every tensor is then mmapped and returned to the OS when freed), the peak resident set (VmHWM, reset
through /proc/self/clear_refs just before the call) minus the resident set before it is the number reported. The
threshold makes allocations slow, so ``tools/analysis_tools/benchmark_contmix.py`` runs this in a subprocess and
times the methods in its own process, without it.

Example::

    python tools/analysis_tools/contmix_peak_memory.py --case 2,8,50,84,16,13 --method fused-cpu --backward
"""
import argparse
import ctypes
import gc
import json

import torch

from mmoverlock.ops.contmix_baselines import contmix_method, random_inputs

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def peak_extra_mib(case, method, backward, threads):
    libc = ctypes.CDLL('libc.so.6')
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 0)
    torch.set_num_threads(threads)
    fn = contmix_method(method, 'cpu')
    K = case[5]

    def call(inputs):
        out = fn(*inputs, K)
        return torch.autograd.grad(out, inputs, torch.ones_like(out)) if backward else out

    call(random_inputs((1, 1, K, K, 2, K)))  # library initialisation and thread pool, not counted
    inputs = random_inputs(case)
    gc.collect()
    libc.malloc_trim(0)
    base = status_kib('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set
    keep = call(inputs)
    peak = status_kib('VmHWM')
    del keep
    return (peak - base) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--case', required=True, help='B,G,H,W,C,K')
    parser.add_argument('--method', required=True, help='fused-<backend>[:<isa>], unfused or unfold')
    parser.add_argument('--backward', action='store_true', help='forward + backward (default: forward alone)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    case = tuple(int(x) for x in args.case.split(','))
    if len(case) != 6:
        parser.error(f'--case must be six integers B,G,H,W,C,K, got {args.case!r}')
    print(json.dumps({'peak_extra_mib': peak_extra_mib(case, args.method, args.backward, args.threads)}))


if __name__ == '__main__':
    main()
