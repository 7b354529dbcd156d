"""Helpers shared by the config and tool tests (importable as ``_helpers``: pytest puts ``tests/`` on sys.path).

Why a module and not only fixtures: the tools are scripts (``tools/*.py`` import their siblings by bare name, as they
do when run), and the distributed test needs a hook that the spawned training processes import too.
"""
import os
import os.path as osp
import subprocess
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TESTS_DIR = osp.join(REPO_ROOT, 'tests')
TOOLS_DIR = osp.join(REPO_ROOT, 'tools')
CONFIG_DIR = osp.join(REPO_ROOT, 'configs')
SMOKE_DET = osp.join(CONFIG_DIR, '_smoke_', 'cascade-mask-rcnn_overlock-pico_fpn_1xb8-smoke_shapes-coco.py')
SMOKE_SEG = osp.join(CONFIG_DIR, '_smoke_', 'upernet_overlock-pico_1xb8-smoke_shapes-128x128.py')

if TOOLS_DIR not in sys.path:  # so tests can `import train, get_flops, ...` like the scripts import each other
    sys.path.insert(0, TOOLS_DIR)


def all_configs():
    """Every user-facing config (everything under configs/ except the ``_base_`` fragments), sorted."""
    found = []
    for folder, _dirs, files in os.walk(CONFIG_DIR):
        if '_base_' in folder.split(os.sep):
            continue
        found += [osp.join(folder, f) for f in files if f.endswith('.py')]
    return sorted(found)


def run_tool(args, cwd, timeout=600, env=None, launcher=None):
    """Run ``tools/<args[0]> args[1:]`` with this interpreter (or ``launcher`` + script); fail with the log tail.

    Returns:
        str: the combined stdout/stderr.
    """
    script = osp.join(TOOLS_DIR, args[0])
    cmd = (launcher or [sys.executable]) + [script] + [str(a) for a in args[1:]]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get('PYTHONPATH', '')]))
    full_env.update(env or {})
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}')
    return proc.stdout


def write_config(path, base, text=''):
    """A config file inheriting ``base`` (absolute path) with extra ``text``: how tests override lists and imports."""
    with open(path, 'w') as f:
        f.write(f'_base_ = [{base!r}]\n{text}')
    return str(path)
