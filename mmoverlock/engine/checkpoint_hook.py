"""A checkpoint hook whose checkpoints a killed (preempted) training job resumes from, losing and repeating nothing.

mmengine 0.10.7's ``CheckpointHook`` writes ``epoch_N.pth`` in place, deletes the oldest kept checkpoint *before*
writing the new one, and rewrites ``last_checkpoint`` in place. A job killed inside one of those writes leaves a
truncated checkpoint, an empty or cut-off pointer, or (``max_keep_ckpts=1``, as in the released recipes) a pointer
to a checkpoint already deleted; ``--resume`` then stops with a file-not-found or zip error. It also saves no random
number generator state, so a resumed run draws other random numbers than an uninterrupted one.

:class:`ResumableCheckpointHook` takes the same arguments and

* writes each checkpoint atomically (:class:`~mmoverlock.checkpoint_io.AtomicLocalBackend`: temporary file, fsync,
  ``os.replace``), then the pointer atomically, and only then deletes the checkpoints beyond ``max_keep_ckpts``, so
  at every moment ``last_checkpoint`` names a complete file;
* on a bare ``--resume`` checks that the pointer's checkpoint is complete, else takes the newest complete checkpoint
  of the folder (and says why); it starts from scratch (with a warning) only when there was never a checkpoint, and
  refuses when the folder holds checkpoints that are all incomplete. ``--resume PATH`` of an incomplete file is an
  error;
* stores the Python, NumPy, torch CPU and CUDA generators in the checkpoint and restores them on resume (one process;
  with several, each rank's generators differ and are not restored), and runs validation between a save and the
  next training step with the generators put back afterwards, so the resumed run continues the same random stream
  as an uninterrupted one.
"""
import logging
import os
import os.path as osp
import random
import re
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import get_dist_info, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ..checkpoint_io import ATOMIC_BACKEND, is_complete_checkpoint, remove_temporary_files, write_atomic

#: The file in the work dir that names the latest checkpoint (mmengine's name; its ``find_latest_checkpoint`` reads it).
POINTER_FILE = 'last_checkpoint'
#: Checkpoint entry holding the random number generators' state.
RNG_STATE_KEY = 'rng_state'


def capture_rng_state() -> dict:
    """The state of Python's, NumPy's and torch's (CPU, every CUDA device) global generators, in types that load
    with ``weights_only=True``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return dict(
        python=random.getstate(),
        numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), position=int(position),
                   has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian)),
        torch=torch.get_rng_state(),
        cuda=cuda)


def restore_rng_state(state: dict) -> None:
    """Put back what :func:`capture_rng_state` returned (tensors may come back on another device after loading)."""
    random.setstate(state['python'])
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['name'], numpy_state['keys'].cpu().numpy().astype(np.uint32),
                         numpy_state['position'], numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'].cpu())
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


def _step_pattern(filename_tmpl: str) -> re.Pattern:
    """Regex matching the names ``filename_tmpl`` (e.g. ``epoch_{}.pth``) gives, with the step as group 1."""
    prefix, _, rest = filename_tmpl.partition('{')
    return re.compile('^' + re.escape(prefix) + r'(\d+)' + re.escape(rest.partition('}')[2]) + '$')


def find_resumable_checkpoint(work_dir: str, checkpoint_dir: str, filename_tmpl: str) -> Optional[str]:
    """The checkpoint a bare ``--resume`` continues from: the one ``last_checkpoint`` names if it is complete, else the
    newest complete one in ``checkpoint_dir``; ``None`` when there has never been a checkpoint.

    Args:
        work_dir (str): The run's work dir (holds ``last_checkpoint``).
        checkpoint_dir (str): Where the checkpoints are written.
        filename_tmpl (str): Their names, e.g. ``epoch_{}.pth``.

    Raises:
        RuntimeError: Checkpoints were written but none is complete; starting over would silently lose the run.
    """
    pointer_file = osp.join(work_dir, POINTER_FILE)
    named = None
    if osp.isfile(pointer_file):
        with open(pointer_file) as f:
            named = f.read().strip()
        if named and is_complete_checkpoint(named):
            print_log(f'Resuming from {named} (named by {pointer_file}; complete).', logger='current')
            return named
    pattern = _step_pattern(filename_tmpl)
    found = []
    if osp.isdir(checkpoint_dir):
        found = sorted(((int(m.group(1)), osp.join(checkpoint_dir, m.group(0)))
                        for m in map(pattern.match, os.listdir(checkpoint_dir)) if m), reverse=True)
    complete = [path for _step, path in found if is_complete_checkpoint(path)]
    if not osp.isfile(pointer_file):
        why = f'{pointer_file} does not exist'
    elif not named:
        why = f'{pointer_file} is empty'
    else:
        why = f'{pointer_file} names {named}, which is {"incomplete" if osp.exists(named) else "missing"}'
    if complete:
        print_log(f'{why}; resuming from {complete[0]}, the newest complete checkpoint in {checkpoint_dir}.',
                  logger='current', level=logging.WARNING)
        return complete[0]
    if named or found:
        raise RuntimeError(f'--resume: no complete checkpoint to resume from: {why}, and none of '
                           f'{[path for _step, path in found] or "the files"} in {checkpoint_dir} is complete. '
                           f'Refusing to start over silently; remove them (or train without --resume) to start over.')
    print_log(f'--resume: no checkpoint in {checkpoint_dir} yet ({why}); training starts from scratch.',
              logger='current', level=logging.WARNING)
    return None


@HOOKS.register_module()
class ResumableCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints survive the job being killed at any moment.

    See the module docstring for what it adds. Atomic writes apply to local folders (the default); with
    ``backend_args``/``file_client_args`` or an ``out_dir`` URI it writes through that backend as mmengine does, and
    only the ordering, the resume checks and the generator state remain.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.atomic = (self.backend_args is None and self.file_client_args is None
                       and (self.out_dir is None or '://' not in str(self.out_dir)))
        if self.atomic:
            self.backend_args = dict(backend=ATOMIC_BACKEND)
        self._resumed_rng_state = None
        self._rng_state_outside_val = None

    def _checkpoint_dir(self, runner) -> str:
        """Where checkpoints go, as ``CheckpointHook.before_train`` works it out (usable before it has run)."""
        if self.out_dir is None or self.out_dir == runner.work_dir:
            return runner.work_dir
        return osp.join(str(self.out_dir), osp.basename(runner.work_dir.rstrip(osp.sep)))

    def before_run(self, runner) -> None:
        """Pick the checkpoint to resume from before mmengine's runner loads it."""
        if not getattr(runner, '_resume', False):
            return
        requested, checkpoint_dir = runner._load_from, self._checkpoint_dir(runner)
        if requested is None:
            if '://' not in checkpoint_dir:  # remote folders: mmengine's own lookup
                runner._load_from = find_resumable_checkpoint(runner.work_dir, checkpoint_dir, self.filename_tmpl)
        elif '://' not in str(requested) and osp.exists(requested) and not is_complete_checkpoint(requested):
            raise ValueError(f'--resume {requested}: the file is not a complete checkpoint (cut off while it was '
                             f'written?); give a complete one, or a bare --resume to pick the newest complete one')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self.atomic and is_main_process():
            for folder in {str(self.out_dir), runner.work_dir}:
                for path in remove_temporary_files(folder):
                    runner.logger.info(f'removed {path}, left by a write that did not finish')
        if self._resumed_rng_state is not None:
            restore_rng_state(self._resumed_rng_state)
            self._resumed_rng_state = None
            runner.logger.info('restored the random number generators of the resumed checkpoint')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return
        state = checkpoint.get(RNG_STATE_KEY)
        if state is None:
            runner.logger.warning('the resumed checkpoint holds no random number generator state (not written by '
                                  'ResumableCheckpointHook): the run continues with other random numbers')
        elif get_dist_info()[1] > 1:
            runner.logger.info('several processes: each keeps the generators it was seeded with')
        else:
            self._resumed_rng_state = state

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # During validation, save the state training continues with after it.
        checkpoint[RNG_STATE_KEY] = self._rng_state_outside_val or capture_rng_state()

    def before_val(self, runner) -> None:
        self._rng_state_outside_val = capture_rng_state()

    def after_val(self, runner) -> None:
        if self._rng_state_outside_val is not None:
            restore_rng_state(self._rng_state_outside_val)
            self._rng_state_outside_val = None

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """Save, then point at the new checkpoint, then delete what ``max_keep_ckpts`` drops: never the other way."""
        if not self.atomic:
            return super()._save_checkpoint_with_step(runner, step, meta)
        dropped = self._keep(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_atomic(osp.join(runner.work_dir, POINTER_FILE), self.last_ckpt)
        for old_step in dropped:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
                self.file_backend.rmtree(path)

    def _keep(self, runner, step) -> List[int]:
        """Record ``step`` among the kept checkpoints (as ``CheckpointHook`` does); return the steps it pushes out."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        dropped = [self.keep_ckpt_ids.popleft()] if len(self.keep_ckpt_ids) == self.max_keep_ckpts else []
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return dropped
