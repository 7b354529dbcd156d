"""Paths, the tiny architecture and a tool runner shared by the tests (importable as ``_helpers``: pytest puts
``tests/`` on ``sys.path`` because ``tests/conftest.py`` sits in a folder without ``__init__.py``).

The command-line tools are run as a user runs them, in a subprocess; what tests need from them in-process lives in
the package (:mod:`mmoverlock.apis`, :mod:`mmoverlock.analysis`, :mod:`mmoverlock.engine`).
"""
import functools
import os
import os.path as osp
import subprocess
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TESTS_DIR = osp.join(REPO_ROOT, 'tests')
CONFIG_DIR = osp.join(REPO_ROOT, 'configs')
SMOKE_DET = osp.join(CONFIG_DIR, '_smoke_', 'cascade-mask-rcnn_overlock-pico_fpn_1xb8-smoke_shapes-coco.py')
SMOKE_SEG = osp.join(CONFIG_DIR, '_smoke_', 'upernet_overlock-pico_1xb8-smoke_shapes-128x128.py')


@functools.lru_cache(maxsize=1)
def _pico():
    from mmengine.config import Config
    return Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'models', 'overlock_pico.py'))


def __getattr__(name):
    """``TINY_ARCH``: the tiny architecture of the parity references and the smoke configs (one definition, in the
    config); ``TINY_CHANNELS``: its level channels (out_channels of all four levels, either form). Read from the
    config on first use, so that the helpers of tests/test_ops import without mmengine."""
    if name == 'TINY_ARCH':
        return _pico().overlock_pico_arch.to_dict()
    if name == 'TINY_CHANNELS':
        return list(_pico().overlock_pico_channels)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def all_configs():
    """Every user-facing config (everything under configs/ except the ``_base_`` fragments), sorted."""
    found = []
    for folder, _dirs, files in os.walk(CONFIG_DIR):
        if '_base_' in folder.split(os.sep):
            continue
        found += [osp.join(folder, f) for f in files if f.endswith('.py')]
    return sorted(found)


#: Environment of the command-line tools the tests run: no GPU visible. The tools (mmengine's runner, the benchmarks)
#: pick CUDA whenever torch sees a GPU, and the set-up's mmcv has CPU ops only (RoIAlign, NMS), so on a GPU machine
#: the detection runs would fail; the tool tests are CPU tests. GPU checks live in the CUDA tests and
#: tools/gpu_check.sh.
CPU_ONLY = {'CUDA_VISIBLE_DEVICES': ''}


def run_tool(args, cwd, timeout=600, env=None, launcher=None):
    """Run the script ``args[0]`` (relative to the repository root) with ``args[1:]`` under this interpreter (or
    ``launcher`` + script) on the CPU (:data:`CPU_ONLY`, unless ``env`` sets ``CUDA_VISIBLE_DEVICES``); fail with the
    log tail.

    Returns:
        str: the combined stdout/stderr.
    """
    script = osp.join(REPO_ROOT, args[0])
    cmd = (launcher or [sys.executable]) + [script] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **CPU_ONLY, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}')
    return proc.stdout


def write_config(path, base, text=''):
    """A config file inheriting ``base`` (absolute path) with extra ``text``: how tests override lists and imports."""
    with open(path, 'w') as f:
        f.write(f'_base_ = [{base!r}]\n{text}')
    return str(path)


def rel_err(actual, expected) -> float:
    """``max |a - b| / max |b|``: how the parity tests compare with the authors' float64 references."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def assert_matches_manifest(model, entry):
    """``model``'s state dict has exactly the keys and shapes of a manifest entry, and its parameter count."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(shapes) == set(entry['state_dict']), (
        f'missing {sorted(set(entry["state_dict"]) - set(shapes))[:5]}, '
        f'unexpected {sorted(set(shapes) - set(entry["state_dict"]))[:5]}')
    assert shapes == entry['state_dict']
    assert sum(p.numel() for p in model.parameters()) == entry['num_params']


def record_mode_switches(monkeypatch, model) -> list:
    """The modes ``model.train(mode)`` is called with from here on (``eval()`` records ``False``), in order."""
    switches = []
    train = type(model).train

    def recording_train(module, mode=True):
        switches.append(mode)
        return train(module, mode)

    monkeypatch.setattr(type(model), 'train', recording_train)
    return switches


def assert_one_switch_per_phase(monkeypatch, model, infer, train_step) -> list:
    """Two ``infer()`` calls, then two ``train_step()`` calls, of a benchmark's timed calls on ``model`` (in training
    mode to start with) switch its mode once per phase, not once per call; returns the recorded switches."""
    assert model.training, 'start from training mode, so that inference has a switch to make'
    switches = record_mode_switches(monkeypatch, model)
    infer()
    infer()
    assert switches == [False] and not model.training
    train_step()
    train_step()
    assert switches == [False, True] and model.training
    return switches
