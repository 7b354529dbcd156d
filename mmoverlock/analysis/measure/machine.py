"""What a figure was measured on: the CPU (or GPU), the instruction sets each library uses, threads and load, the
software, the date. Every result file carries it, and :func:`describe_machine` puts it next to the tables."""
import datetime
import os
import platform
import re
import subprocess
import sys
from typing import Optional

import torch

from .isa import ISA_ENV_VARS, current_isa_setting

#: CPU flags that decide which kernels the libraries can pick.
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'amx_tile')

#: Environment variables that change how the C allocator hands memory back and forth with the OS (glibc's
#: tunables, a preloaded allocator). They move CPU timings: a buffer freed to the OS comes back as fresh pages, and
#: touching each one is a page fault, so two models' ratio depends on how often each reallocates large maps.
ALLOCATOR_ENV_PREFIXES = ('MALLOC_', 'GLIBC_TUNABLES', 'LD_PRELOAD')

_ONEDNN_PROBE = ('import torch\n'
                 'torch.nn.functional.conv2d(torch.ones(1, 8, 8, 8), torch.ones(8, 1, 3, 3), groups=8)\n')


def _proc_cpuinfo_field(name: str) -> Optional[str]:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.split(':', 1)[0].strip() == name:
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` gives it (else ``/proc/cpuinfo``, else the platform's)."""
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        match = re.search(r'^Model name:\s*(.+)$', out, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return _proc_cpuinfo_field('model name') or platform.processor() or platform.machine()


def cpu_isa_flags() -> list:
    """Which of :data:`ISA_FLAGS` the CPU reports."""
    flags = set((_proc_cpuinfo_field('flags') or '').split())
    return [flag for flag in ISA_FLAGS if flag in flags]


def onednn_isa() -> Optional[str]:
    """The instruction set oneDNN runs with under this environment (its verbose banner, from a child process)."""
    env = dict(os.environ, ONEDNN_VERBOSE='1', CUDA_VISIBLE_DEVICES='')
    try:
        out = subprocess.run([sys.executable, '-c', _ONEDNN_PROBE], capture_output=True, text=True, env=env,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'info,cpu,isa:(.+)$', out, re.MULTILINE)
    return match.group(1).strip() if match else None


def mmoverlock_cpu_capability() -> dict:
    """The instruction set of mmoverlock's compiled CPU kernels now, and those the CPU allows (``None``: not built)."""
    try:
        import mmoverlock._ext as ext
    except ImportError:
        return dict(mmoverlock=None, mmoverlock_supported=None)
    return dict(mmoverlock=ext.cpu_capability(), mmoverlock_supported=list(ext.cpu_capabilities()))


def allocator_environment(environ=None) -> dict:
    """The variables of :data:`ALLOCATOR_ENV_PREFIXES` set in ``environ`` (default: this process's); empty means the
    C library's own allocator with its defaults."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items()) if v and k.startswith(ALLOCATOR_ENV_PREFIXES)}


def machine_info(device: str = 'cpu', probe_onednn: bool = True) -> dict:
    """The record of the machine and settings a measurement runs under.

    Args:
        device (str): ``'cpu'`` or ``'cuda'`` (adds the GPU's name and memory). Defaults to ``'cpu'``.
        probe_onednn (bool): Ask oneDNN which instruction set it uses (a child process, about a second).
            Defaults to ``True``.

    Returns:
        dict: date (UTC), cpu, cores, torch threads, load average, ISA flags of the CPU, the ISA setting and its
        variables, the instruction set of mmoverlock's kernels, ATen and oneDNN, the allocator's environment
        (:func:`allocator_environment`), python, torch, platform.
    """
    isa = dict(setting=current_isa_setting(), cpu_flags=cpu_isa_flags(), **mmoverlock_cpu_capability(),
               aten=torch.backends.cpu.get_cpu_capability(), onednn=onednn_isa() if probe_onednn else None,
               env={var: os.environ.get(var) for var in ISA_ENV_VARS})
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), cpu=cpu_model(),
                cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                load_average=[round(x, 2) for x in os.getloadavg()], isa=isa,
                allocator=allocator_environment(), python=platform.python_version(),
                torch=torch.__version__, platform=platform.platform(), device=str(device))
    if torch.device(device).type == 'cuda':
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def describe_machine(info: dict) -> str:
    """One line for a report: the device, the ISA in use per library, threads, load, torch."""
    isa = info['isa']
    used = ', '.join(f'{lib} {isa[key]}' for lib, key in (('mmoverlock', 'mmoverlock'), ('ATen', 'aten'),
                                                            ('oneDNN', 'onednn')) if isa.get(key))
    where = f"{info['gpu']} (GPU), host CPU {info['cpu']}" if info.get('gpu') else info['cpu']
    load = ' / '.join(f'{x:.2f}' for x in info['load_average'])
    allocator = ', '.join(f'{k}={v}' for k, v in info.get('allocator', {}).items()) or 'defaults'
    return (f"{where}, {info['cores']} cores (flags: {' '.join(isa['cpu_flags']) or 'none of note'}); ISA setting "
            f"**{isa['setting']}** ({used}); {info['torch_threads']} torch threads; allocator {allocator}; "
            f"load average {load} at the start; "
            f"torch {info['torch']}, Python {info['python']}; {info['date']}")
