"""Test-only: SIGKILL the training process at a chosen moment, to test resuming after preemption.

Import it through a config's ``custom_imports`` and add ``dict(type='KillSwitchHook')`` to ``custom_hooks``; the
environment variable ``KILL_SWITCH`` picks the moment (unset: nothing happens):

* ``iter:N``: when training iteration N + 1 is about to start (N iterations done; at an epoch boundary when N is a
  multiple of the epoch length);
* ``write:NAME:K``: halfway through the K-th write of a file whose name contains NAME (``epoch_2.pth``,
  ``last_checkpoint``): half the bytes reach the disk, then the process dies. Any file opened for writing with
  Python's ``open`` counts, whoever writes it (mmengine's hook in place, or a temporary file of an atomic write).

The kill is a real ``SIGKILL`` that the process sends itself: no exception, no ``finally`` block, no buffer flush.
Before dying it prints ``KILL_SWITCH fired: <spec>`` so a test can tell the kill it asked for from a crash.
"""
import builtins
import os
import os.path as osp
import signal
import sys

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

SPEC = os.environ.get('KILL_SWITCH', '')


def die() -> None:
    print(f'KILL_SWITCH fired: {SPEC}', flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingFile:
    """A file object whose first ``write`` writes half its data, syncs it to disk, and kills the process."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        self._file.write(data[:len(data) // 2])
        self._file.flush()
        os.fsync(self._file.fileno())
        die()

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self._file.__exit__(*exc_info)


def _trap_writes(name: str, nth: int) -> None:
    real_open = builtins.open
    seen = 0

    def open_with_trap(file, mode='r', *args, **kwargs):
        nonlocal seen
        opened = real_open(file, mode, *args, **kwargs)
        if (isinstance(file, (str, os.PathLike)) and name in osp.basename(os.fspath(file))
                and any(flag in mode for flag in 'wax+')):
            seen += 1
            if seen == nth:
                return _DyingFile(opened)
        return opened

    builtins.open = open_with_trap


@HOOKS.register_module()
class KillSwitchHook(Hook):
    """Kills the process before the iteration that ``KILL_SWITCH=iter:N`` names (see the module docstring)."""

    priority = 'HIGHEST'

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        kind, _, count = SPEC.partition(':')
        if kind == 'iter' and runner.iter == int(count):
            die()


if SPEC.startswith('write:'):
    _name, _nth = SPEC[len('write:'):].rsplit(':', 1)
    _trap_writes(_name, int(_nth))
