"""Instruction-set settings of a benchmark: the best this CPU has, or AVX2 forced on every library, so one machine
gives the figures of an AVX2-only CPU too (issue 19: oneDNN's depthwise paths differ most between the two).

``avx2`` caps every library that picks its kernels by the CPU: mmoverlock's compiled kernels
(``MMOVERLOCK_CPU_CAPABILITY``), oneDNN, which runs torch's convolutions for OverLoCK and the ConvNeXt-T / Swin-T
baselines alike (``ONEDNN_MAX_CPU_ISA``), ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``) and MKL's BLAS
(``MKL_ENABLE_INSTRUCTIONS``). The libraries read these when they load, so a setting other than the current
process's runs in a child process (:func:`run_isa_settings`).
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence

#: Setting name -> the environment it forces (``best`` forces nothing).
ISA_SETTINGS: Dict[str, Dict[str, str]] = {
    'best': {},
    'avx2': {
        'MMOVERLOCK_CPU_CAPABILITY': 'avx2',
        'ONEDNN_MAX_CPU_ISA': 'AVX2',
        'ATEN_CPU_CAPABILITY': 'avx2',
        'MKL_ENABLE_INSTRUCTIONS': 'AVX2',
    },
}
#: Every variable a setting may force; the others' are removed from a child's environment.
ISA_ENV_VARS = sorted({var for env in ISA_SETTINGS.values() for var in env})


def current_isa_setting(environ: Optional[Mapping[str, str]] = None) -> str:
    """The setting this process runs under: a name of :data:`ISA_SETTINGS`, or ``'custom'`` for any other mix."""
    environ = os.environ if environ is None else environ
    forced = {var: environ[var] for var in ISA_ENV_VARS if environ.get(var)}
    return next((name for name, env in ISA_SETTINGS.items() if env == forced), 'custom')


def isa_environment(setting: str, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``environ`` (default: this process's) with exactly ``setting``'s variables forced."""
    if setting not in ISA_SETTINGS:
        raise ValueError(f'unknown ISA setting {setting!r}; expected one of {sorted(ISA_SETTINGS)}')
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in ISA_ENV_VARS}
    env.update(ISA_SETTINGS[setting])
    return env


def add_isa_argument(parser: argparse.ArgumentParser) -> None:
    """``--isa SETTING [SETTING ...]`` (choices: :data:`ISA_SETTINGS`), default ``None``: this process as it is."""
    parser.add_argument(
        '--isa', nargs='+', choices=list(ISA_SETTINGS), default=None,
        help='instruction-set settings to measure under, each in its own results subfolder with a comparison '
        'beside them: best = what this CPU has, avx2 = AVX2 forced on mmoverlock, oneDNN, ATen and MKL (a setting '
        'other than this process\'s runs in a subprocess). Default: this process as it is, no subfolder')


def isa_output(path: str, setting: Optional[str]) -> str:
    """Where a setting's results go: a folder ``path`` gets a ``setting`` subfolder, a file ``dir/name`` becomes
    ``dir/setting/name``; ``setting=None`` (no ``--isa``) keeps ``path``."""
    if setting is None:
        return path
    if osp.splitext(path)[1]:
        return osp.join(osp.dirname(path), setting, osp.basename(path))
    return osp.join(path, setting)


def run_isa_settings(settings: Sequence[str], script: str, argv: Sequence[str], measure: Callable[[str], dict],
                     load: Callable[[str], dict]) -> Dict[str, dict]:
    """Measure under each setting: here for this process's, else by re-running the tool in a child.

    The child runs ``script`` with ``argv`` plus ``--isa SETTING`` (argparse keeps the last ``--isa``) in
    :func:`isa_environment`; it writes its results where ``load`` finds them.

    Args:
        settings (Sequence[str]): Names of :data:`ISA_SETTINGS`, in the order to run them.
        script (str): The tool's file.
        argv (Sequence[str]): The tool's arguments as given (without the interpreter and script).
        measure (Callable[[str], dict]): Runs the tool's measurement in this process for a setting, returns its
            results (having written them).
        load (Callable[[str], dict]): Reads back the results a child wrote for a setting.

    Returns:
        dict[str, dict]: Setting -> results, in the order given.
    """
    here = current_isa_setting()
    results = {}
    for setting in settings:
        if setting == here:
            results[setting] = measure(setting)
            continue
        cmd: List[str] = [sys.executable, osp.abspath(script), *map(str, argv), '--isa', setting]
        print(f'== ISA setting {setting}: {" ".join(cmd)}', flush=True)
        subprocess.run(cmd, check=True, env=isa_environment(setting))
        results[setting] = load(setting)
    return results
