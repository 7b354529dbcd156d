"""A training job killed with SIGKILL at any moment resumes from its last complete checkpoint, loses and repeats no
iteration, and ends with the weights of an uninterrupted run, bit for bit.

The end-to-end test runs the real ``tools/train.py`` on the bundled data (UperNet with OverLoCK-pico, epoch-based:
2 iterations per epoch, 3 epochs, one checkpoint kept as in the released recipes, validation after epoch 2) and kills
it (a real SIGKILL of the training process, ``tests/_helpers/kill_switch.py``) in the middle of an epoch, halfway
through writing a checkpoint, halfway through writing the ``last_checkpoint`` pointer, and at an epoch boundary right
after a validation; every kill is followed by a bare ``--resume``. An uninterrupted run with the same settings runs
beside it. The unit tests pin down how a bare ``--resume`` picks its checkpoint when files are missing or cut off.
"""
import logging
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from mmengine.logging import MMLogger

from _helpers import REPO_ROOT, SMOKE_SEG, TESTS_DIR, write_config
from mmoverlock.checkpoint_io import is_complete_checkpoint
from mmoverlock.engine import find_resumable_checkpoint

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

EPOCHS, ITERS_PER_EPOCH = 3, 2
SCHEDULE = f"""
custom_imports = dict(imports=['mmoverlock', '_helpers.kill_switch'], allow_failed_imports=False)
custom_hooks = [dict(type='KillSwitchHook')]
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs={EPOCHS}, val_interval=2)
# 8 images, batch 4: {ITERS_PER_EPOCH} iterations per epoch; data loaded in the training process, so the augmentations
# draw from the generators the checkpoints store
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(num_workers=0, persistent_workers=False)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
    dict(type='CosineAnnealingLR', T_max={EPOCHS}, by_epoch=True, begin=0, end={EPOCHS}),
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=1))
"""
# The interrupted run: (KILL_SWITCH of this launch, the epoch it must resume from: None for the first launch).
# Kills happen after iteration 3 (mid-epoch 2), halfway through epoch_2.pth, halfway through the pointer naming it,
# and at the epoch-2 boundary after its validation; the last launch runs to the end.
LAUNCHES = [
    ('iter:3', None),
    ('write:epoch_2.pth:1', 1),
    ('write:last_checkpoint:1', 1),
    (f'iter:{2 * ITERS_PER_EPOCH}', 1),
    (None, 2),
]


def _train_command(config, work_dir):
    return [sys.executable, osp.join(REPO_ROOT, 'tools', 'train.py'), str(config), '--work-dir', str(work_dir)]


def _environment(kill_switch=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get('PYTHONPATH')])),
               PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')  # one thread each: both runs in parallel on 2 cores
    env.pop('KILL_SWITCH', None)
    if kill_switch:
        env['KILL_SWITCH'] = kill_switch
    return env


def _launch(config, work_dir, cwd, kill_switch, resume):
    command = _train_command(config, work_dir) + (['--resume'] if resume else [])
    proc = subprocess.run(command, cwd=cwd, env=_environment(kill_switch), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return proc.returncode, proc.stdout


def _assert_consistent(work_dir):
    """What any kill may leave: the pointer names a complete checkpoint; no file under a checkpoint name is cut off."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        named = f.read().strip()
    assert is_complete_checkpoint(named), f'last_checkpoint names {named!r}, which is missing or incomplete'
    for name in os.listdir(work_dir):
        if name.endswith('.pth'):
            assert is_complete_checkpoint(osp.join(work_dir, name)), f'{name} is cut off'


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_identical(resumed, uninterrupted, where=''):
    """Nested equality with tensors compared bit for bit."""
    if isinstance(uninterrupted, torch.Tensor):
        assert isinstance(resumed, torch.Tensor) and resumed.dtype == uninterrupted.dtype, where
        assert torch.equal(resumed, uninterrupted), f'{where} differs'
    elif isinstance(uninterrupted, dict):
        assert resumed.keys() == uninterrupted.keys(), where
        for key in uninterrupted:
            _assert_identical(resumed[key], uninterrupted[key], f'{where}.{key}')
    elif isinstance(uninterrupted, (list, tuple)):
        assert len(resumed) == len(uninterrupted), where
        for i, (a, b) in enumerate(zip(resumed, uninterrupted)):
            _assert_identical(a, b, f'{where}[{i}]')
    else:
        assert resumed == uninterrupted, f'{where}: {resumed!r} != {uninterrupted!r}'


def test_killed_training_resumes_bit_identical(shapes_workdir, tmp_path):
    config = write_config(tmp_path / 'preempted.py', SMOKE_SEG, SCHEDULE)
    reference_dir, work_dir = tmp_path / 'uninterrupted', tmp_path / 'interrupted'
    reference_log = tmp_path / 'uninterrupted.log'
    with open(reference_log, 'w') as log:  # a file, not a pipe: a pipe nobody reads would stall the run
        reference = subprocess.Popen(_train_command(config, reference_dir), cwd=shapes_workdir, env=_environment(),
                                     stdout=log, stderr=subprocess.STDOUT)
    try:
        for kill_switch, resume_epoch in LAUNCHES:
            code, out = _launch(config, work_dir, shapes_workdir, kill_switch, resume=resume_epoch is not None)
            if resume_epoch is not None:
                assert f'resumed epoch: {resume_epoch}, iter: {resume_epoch * ITERS_PER_EPOCH}' in out, out[-6000:]
            if kill_switch is None:
                assert code == 0, out[-6000:]
            else:
                assert code == -signal.SIGKILL and f'KILL_SWITCH fired: {kill_switch}' in out, \
                    f'{kill_switch}: exit code {code}\n{out[-6000:]}'
                _assert_consistent(work_dir)
        reference.wait(timeout=600)
    finally:
        reference.kill()
    assert reference.returncode == 0, reference_log.read_text()[-6000:]

    final = f'epoch_{EPOCHS}.pth'
    resumed, uninterrupted = _load(work_dir / final), _load(reference_dir / final)
    # no iteration lost or repeated: the same counters, and one AdamW step per iteration of the uninterrupted run
    assert resumed['meta']['epoch'] == uninterrupted['meta']['epoch'] == EPOCHS
    assert resumed['meta']['iter'] == uninterrupted['meta']['iter'] == EPOCHS * ITERS_PER_EPOCH
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {float(s['step']) for s in uninterrupted['optimizer']['state'].values()} == {
        EPOCHS * ITERS_PER_EPOCH}
    _assert_identical(resumed['state_dict'], uninterrupted['state_dict'], 'state_dict')
    _assert_identical(resumed['optimizer'], uninterrupted['optimizer'], 'optimizer')
    _assert_identical(resumed['param_schedulers'], uninterrupted['param_schedulers'], 'param_schedulers')


# ---------------------------------------------------------------- how a bare --resume picks its checkpoint


@pytest.fixture(scope='module')
def complete_checkpoint(tmp_path_factory):
    """A small checkpoint file as mmengine writes them (a torch zip archive)."""
    path = tmp_path_factory.mktemp('checkpoint') / 'complete.pth'
    torch.save(dict(state_dict=dict(weight=torch.arange(4096.0)), meta=dict(epoch=1)), path)
    return path


def _place(complete, folder, name, cut=False):
    path = folder / name
    shutil.copyfile(complete, path)
    if cut:  # what a writer killed halfway leaves
        with open(path, 'r+b') as f:
            f.truncate(osp.getsize(path) // 2)
    return str(path)


def _point(folder, text):
    (folder / 'last_checkpoint').write_text(text)


def test_resume_takes_the_pointer_when_it_names_a_complete_file(tmp_path, complete_checkpoint):
    older = _place(complete_checkpoint, tmp_path, 'epoch_1.pth')
    _place(complete_checkpoint, tmp_path, 'epoch_2.pth')  # written, but the pointer was not updated yet
    _point(tmp_path, older)
    assert find_resumable_checkpoint(str(tmp_path), str(tmp_path), 'epoch_{}.pth') == older


@pytest.mark.parametrize('pointer', ['missing', 'empty', 'cut off', 'names a cut-off file', 'names a deleted file'])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, complete_checkpoint, pointer):
    first = _place(complete_checkpoint, tmp_path, 'epoch_1.pth')
    second = _place(complete_checkpoint, tmp_path, 'epoch_2.pth', cut=pointer == 'names a cut-off file')
    _place(complete_checkpoint, tmp_path, 'epoch_3.pth', cut=True)
    newest_complete = first if pointer == 'names a cut-off file' else second
    if pointer == 'empty':
        _point(tmp_path, '')
    elif pointer == 'cut off':
        _point(tmp_path, second[:len(second) // 2])
    elif pointer == 'names a cut-off file':
        _point(tmp_path, second)
    elif pointer == 'names a deleted file':
        _point(tmp_path, str(tmp_path / 'epoch_0.pth'))
    assert find_resumable_checkpoint(str(tmp_path), str(tmp_path), 'epoch_{}.pth') == newest_complete


def test_resume_refuses_when_every_checkpoint_is_cut_off(tmp_path, complete_checkpoint):
    cut = _place(complete_checkpoint, tmp_path, 'iter_8.pth', cut=True)
    _point(tmp_path, cut)
    with pytest.raises(RuntimeError, match='no complete checkpoint.*Refusing to start over silently'):
        find_resumable_checkpoint(str(tmp_path), str(tmp_path), 'iter_{}.pth')


def test_resume_starts_from_scratch_only_without_any_checkpoint(tmp_path):
    (tmp_path / '.epoch_1.pth.123.tmp').write_bytes(b'PK')  # the temporary file of a write killed halfway
    warnings = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        assert find_resumable_checkpoint(str(tmp_path), str(tmp_path), 'epoch_{}.pth') is None
    finally:
        logger.removeHandler(handler)
    assert any('training starts from scratch' in message for message in warnings), warnings


def test_resume_of_a_named_cut_off_file_is_refused(shapes_workdir, tmp_path, complete_checkpoint):
    cut = _place(complete_checkpoint, tmp_path, 'epoch_1.pth', cut=True)
    command = _train_command(SMOKE_SEG, tmp_path / 'work') + ['--resume', cut]
    proc = subprocess.run(command, cwd=shapes_workdir, env=_environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode != 0 and f'--resume {cut}: the file is not a complete checkpoint' in proc.stdout, \
        proc.stdout[-4000:]
