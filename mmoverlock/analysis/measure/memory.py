"""Peak memory of one call: the single definition every mmoverlock benchmark reports.

**Definition.** The peak memory of a call is how far the memory in use rises above what was in use just before it:

* on the CPU: the process's peak resident set after the call minus its resident set before it (``VmHWM - VmRSS``
  from ``/proc/self/status``), with the peak reset to the current resident set just before the call (writing ``5``
  to ``/proc/self/clear_refs``, Linux >= 4.0). torch keeps no allocator statistics on the CPU, so the pages the
  process holds are measured; glibc is first told to hand freed memory back to the OS (``mmap`` threshold 64 KiB,
  trim threshold 0, ``malloc_trim``), else memory freed before the call would hide in the baseline and be reused
  by the call unseen;
* on a GPU: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` across the call, the peak reset
  just before it.

What is alive before the call (model, optimizer state, inputs, libraries) is not counted; what the call creates,
including what it leaves alive (outputs, first-time gradients), is. The call follows ``warmup`` untimed calls, so
lazy initialisation (oneDNN primitives, optimizer state) is not counted.

**Where.** The allocator setting slows every later allocation, and oneDNN keeps scratch buffers sized by the largest
call it has seen, so on the CPU a comparison measures each candidate in a fresh process
(:func:`peak_memory_in_fresh_process`), which sets glibc up before it builds anything (set after the warm-up, the
heap blocks glibc's dynamic threshold handed out earlier are reused by the call and not returned when freed), and a
process that measures memory itself (:func:`peak_memory_mib`) times nothing afterwards.
"""
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Callable, Dict, Optional

import torch

from .timing import Device, synchronize

#: A line naming the definition above, written next to every memory figure.
PEAK_MEMORY_DEFINITION = ('peak growth above the memory in use just before one call, after a warm-up call: '
                          'VmHWM - VmRSS on the CPU (freed memory returned to the OS; each candidate in a fresh '
                          'process), max_memory_allocated - memory_allocated on CUDA')

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``, ...)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'/proc/self/status has no field {field!r}')


def return_freed_memory_to_os() -> None:
    """Make glibc unmap freed blocks of 64 KiB and more and trim its heaps now (a no-op without glibc)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(_M_TRIM_THRESHOLD, 0)
    libc.malloc_trim(0)


def reset_peak_rss() -> None:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError as error:
        raise RuntimeError('peak memory on the CPU needs Linux >= 4.0 (/proc/self/clear_refs accepting 5) to reset '
                           f'the peak resident set: {error}') from error


def peak_memory_mib(fn: Callable[[], object], device: Device = 'cpu', warmup: int = 0) -> Dict[str, float]:
    """Measure one call of ``fn`` in this process (see the module's definition).

    Args:
        fn (Callable): Zero-argument callable; its result is kept alive until the peak is read.
        device (str | torch.device): Where ``fn`` runs. Defaults to ``'cpu'``.
        warmup (int): Untimed, unmeasured calls first. Defaults to ``0`` (the caller has already run ``fn``).

    Returns:
        dict: ``peak_mib`` (the growth) and ``baseline_mib`` (in use before the call).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    gc.collect()
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        return_freed_memory_to_os()
        base = status_kib('VmRSS') * 1024
        reset_peak_rss()
        result = fn()
        peak = status_kib('VmHWM') * 1024
    del result
    return dict(peak_mib=(peak - base) / 2**20, baseline_mib=base / 2**20)


def load_factory(target: str) -> Callable[..., Callable[[], object]]:
    """``'package.module:function'`` or ``'path/to/script.py:function'`` -> the function."""
    where, sep, name = target.rpartition(':')
    if not sep or not where or not name:
        raise ValueError(f"target must be 'module:function' or 'file.py:function', got {target!r}")
    if where.endswith('.py'):
        spec = importlib.util.spec_from_file_location(f'_measured_{osp.basename(where)[:-3]}', where)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def peak_memory_in_fresh_process(target: str, kwargs: Optional[dict] = None, device: str = 'cpu',
                                 threads: Optional[int] = None, warmup: int = 1,
                                 env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Measure a call in a new interpreter, so nothing another candidate allocated or cached counts.

    The child imports ``target``, calls it with ``kwargs`` to get the zero-argument callable to measure (building the
    model and inputs there, before the baseline is read), and runs :func:`peak_memory_mib` on it.

    Args:
        target (str): ``'package.module:factory'`` or ``'path/to/script.py:factory'``.
        kwargs (dict, optional): JSON-serialisable keyword arguments of the factory. Defaults to ``None``.
        device (str): Where the call runs. Defaults to ``'cpu'``.
        threads (int, optional): torch threads in the child (default: torch's own choice).
        warmup (int): Calls before the measured one. Defaults to ``1``.
        env (dict, optional): Extra environment variables of the child (it inherits this process's).

    Returns:
        dict: As :func:`peak_memory_mib`.
    """
    return run_in_fresh_process('memory', target, kwargs, device, threads, warmup, env)


def run_in_fresh_process(command: str, target: str, kwargs: Optional[dict], device: str, threads: Optional[int],
                         warmup: int, env: Optional[Dict[str, str]]) -> dict:
    """Run ``python -m mmoverlock.analysis.measure <command>`` on a factory and return the JSON it prints."""
    cmd = [sys.executable, '-m', 'mmoverlock.analysis.measure', command, '--target', target,
           '--kwargs', json.dumps(kwargs or {}), '--device', device, '--warmup', str(warmup)]
    if threads is not None:
        cmd += ['--threads', str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f'{command} of {target}({kwargs}) failed in its subprocess (exit {proc.returncode}):\n'
                           f'{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_target(target: str, kwargs: dict, device: str, threads: Optional[int], warmup: int) -> Dict[str, float]:
    """The child's side of :func:`peak_memory_in_fresh_process`."""
    from .timing import set_threads
    # Before anything is allocated: set later, glibc would keep serving the call from heap blocks its dynamic mmap
    # threshold gave the model's construction and warm-up, and not return them when freed (they would count).
    return_freed_memory_to_os()
    set_threads(threads)
    fn = load_factory(target)(**kwargs)
    return peak_memory_mib(fn, device, warmup)
