"""A hook that records every rank's training loss per iteration (mmengine logs rank 0's only).

Used by the distributed test: with DDP each rank's loss is the mean over its own samples, so the loss of the
equivalent single-process run (twice the batch) is the mean over ranks of these records. It also records which
BatchNorm classes the trained model holds, to show that SyncBN conversion happened.
"""
import json
import os.path as osp

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch.nn.modules.batchnorm import _BatchNorm


@HOOKS.register_module()
class LossRecorderHook(Hook):
    """Write ``{out_dir}/losses_rank{rank}.json``: ``losses`` (total loss per iteration), ``norm_types``."""

    priority = 'LOWEST'

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))

    def after_train(self, runner):
        norm_types = sorted({type(m).__name__ for m in runner.model.modules() if isinstance(m, _BatchNorm)})
        with open(osp.join(self.out_dir, f'losses_rank{runner.rank}.json'), 'w') as f:
            json.dump(dict(losses=self.losses, norm_types=norm_types, world_size=runner.world_size), f)
