"""The smoke configs learn: a short run with each config's own optimizer and schedule lowers the training loss, and
the same run with the learning rate set to 0 does not.

The main job (``make smoke-train``) judges "trained is clearly above untrained" on evaluation metrics after minutes
of training; this test checks the same property in seconds on the training loss, and checks that its rule tells a
model that cannot learn (lr 0) from one that can. A config whose optimizer never moves the weights fails here.
"""
import json
import os

import pytest

from _helpers import SMOKE_DET, SMOKE_SEG, TESTS_DIR, run_tool, write_config

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

#: A run "learned" when the mean loss of its last LAST iterations is below FACTOR x the mean of its first FIRST.
FIRST, LAST, FACTOR = 3, 5, 0.7

# Per config: overrides for a short run on the small copy of the data (no validation, no checkpoints, every loss
# recorded by tests/_helpers/loss_recorder.py).
SHORT_RUNS = {
    'seg': (SMOKE_SEG, 'train_cfg = dict(max_iters=40, val_interval=1000)\n'),
    'det': (SMOKE_DET, 'train_cfg = dict(max_epochs=30, val_interval=1000)\n'),
}
COMMON = """
custom_imports = dict(imports=['mmoverlock', '_helpers.loss_recorder'], allow_failed_imports=False)
val_dataloader = None
val_evaluator = None
val_cfg = None
custom_hooks = [dict(type='LossRecorderHook', out_dir={out_dir!r})]
default_hooks = dict(checkpoint=dict(interval=1000, save_last=False), logger=dict(interval=10))
"""


def learned(losses):
    return sum(losses[-LAST:]) / LAST < FACTOR * sum(losses[:FIRST]) / FIRST


def train_losses(workdir, tmp_path, task, extra=''):
    config, schedule = SHORT_RUNS[task]
    out_dir = tmp_path / task
    out_dir.mkdir(parents=True)
    cfg = write_config(tmp_path / f'{task}.py', config, schedule + COMMON.format(out_dir=str(out_dir)) + extra)
    env = dict(PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get('PYTHONPATH')])))
    run_tool(['tools/train.py', cfg, '--work-dir', out_dir], cwd=workdir, env=env)
    return json.loads((out_dir / 'losses_rank0.json').read_text())['losses']


@pytest.mark.parametrize('task', ['seg', 'det'])
def test_smoke_config_learns_and_lr_zero_does_not(shapes_workdir, tmp_path, task):
    losses = train_losses(shapes_workdir, tmp_path / 'as_configured', task)
    frozen = train_losses(shapes_workdir, tmp_path / 'lr0', task, 'optim_wrapper = dict(optimizer=dict(lr=0.0))\n')
    assert len(losses) == len(frozen) >= FIRST + LAST
    assert learned(losses), f'{task}: the training loss did not fall with the config\'s optimizer: {losses}'
    assert not learned(frozen), f'{task}: the loss fell with lr 0, so the rule cannot tell learning apart: {frozen}'
