"""CPU data-parallel training through mmengine's launcher: gloo process group, DDP wrapper and a CPU SyncBatchNorm.

mmengine 0.10.7 assumes an accelerator whenever ``--launcher`` is not ``none``, and three things break on a CPU-only
machine:

1. ``mmengine.dist.init_dist`` calls ``torch.cuda.set_device(local_rank)``, which raises without an NVIDIA driver;
2. ``Runner.wrap_model`` passes ``device_ids=[local_rank]`` to DDP, which DDP rejects for CPU modules;
3. ``torch.nn.SyncBatchNorm`` (what ``sync_bn='torch'`` and mmseg's ``SyncBN`` heads build) raises for CPU tensors.

:func:`setup_cpu_distributed` fixes all three before the runner is built (``tools/train.py`` and ``tools/test.py``
call it through :func:`mmoverlock.engine.build_runner`) without touching the config semantics: it initialises a gloo
process group itself (so the runner skips ``init_dist``) and selects :class:`CPUDistributedDataParallel`, which drops
``device_ids`` and swaps every SyncBatchNorm for :class:`CPUSyncBatchNorm` (a ``_BatchNorm`` with the same state-dict
keys whose statistics are all-reduced over gloo, gradients flowing through the all-reduce). The wrapper is registered
in mmengine's ``MODEL_WRAPPERS`` on ``import mmoverlock`` (a config's ``custom_imports``), so a runner resolves it by
name. On GPUs nothing here is used: NCCL and torch's own SyncBatchNorm run as usual.
"""
import os
import subprocess

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.layers import update_running_stats


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group whose backward is again a sum (d/dx_r of sum_r' L_r' collects every rank's term).

    ``torch.distributed.nn.functional.all_reduce`` does the same but warns on every call since torch 2.6.
    """

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None


class CPUSyncBatchNorm(_BatchNorm):
    """Batch normalisation whose batch statistics are synchronised over a gloo process group (CPU tensors).

    It derives from ``_BatchNorm``, not from :class:`torch.nn.SyncBatchNorm`: DDP refuses to wrap a CPU module that
    contains any ``nn.SyncBatchNorm`` ("SyncBatchNorm layers only work with GPU modules"), subclasses included.

    In training with more than one rank, the batch mean and (biased) variance are computed over the samples of all
    ranks in two all-reduces (mean first, then centred squares, which keeps float32 accurate) and the running
    statistics get the unbiased variance, as torch's kernel does; gradients flow through the all-reduces. In eval or
    with one rank it is a plain BatchNorm. Parameters and buffers are those of every BatchNorm, so checkpoints load
    into the unconverted model unchanged.

    Args:
        num_features (int): Channels ``C`` of the ``(N, C, ...)`` input.
        eps, momentum, affine, track_running_stats: As for :class:`torch.nn.BatchNorm2d`.
        process_group (ProcessGroup, optional): Group to synchronise over; the default group when ``None``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'CPUSyncBatchNorm expects an (N, C, ...) input, got {input.dim()}D')

    def forward(self, input):
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.size(1)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, channels] + [1] * (input.dim() - 2)

        count = input.new_full((1, ), input.numel() // channels)
        totals = _AllReduceSum.apply(torch.cat([input.sum(dims), count]), group)
        num = totals[-1]
        mean = totals[:channels] / num
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / num
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)

        unbiased = var.detach() * (num / (num - 1).clamp(min=1))
        update_running_stats([self], torch.stack([mean.detach(), unbiased]).unsqueeze(0))
        return out


def convert_cpu_sync_batchnorm(module):
    """Replace every :class:`torch.nn.SyncBatchNorm` under ``module`` by :class:`CPUSyncBatchNorm`, sharing tensors.

    Plain BatchNorms are left alone: which ones become SyncBN is the config's choice (``sync_bn`` converts the rest
    before the model is wrapped), this only makes the SyncBNs work on the CPU.

    Args:
        module (nn.Module): Model (or layer) to convert in place.

    Returns:
        nn.Module: ``module``, or its replacement when ``module`` itself is a SyncBatchNorm.
    """
    if isinstance(module, nn.SyncBatchNorm):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, module.process_group)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_cpu_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` for CPU modules: no ``device_ids``, SyncBN layers made CPU-capable.

    Args:
        module (nn.Module): The model; its SyncBatchNorms become :class:`CPUSyncBatchNorm` before wrapping.
        device_ids: Ignored (the runner always passes ``[local_rank]``; DDP refuses it for CPU modules).
        **kwargs: Passed on to :class:`MMDistributedDataParallel` (e.g. ``find_unused_parameters``).
    """

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=convert_cpu_sync_batchnorm(module), device_ids=None, **kwargs)


def _slurm_env():
    """Fill torch's rendezvous variables from SLURM's (what mmengine's slurm launcher does, minus set_device)."""
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' not in os.environ:
        hosts = subprocess.check_output(['scontrol', 'show', 'hostname', os.environ['SLURM_NODELIST']], text=True)
        os.environ['MASTER_ADDR'] = hosts.split()[0]
    os.environ.setdefault('MASTER_PORT', '29500')


def setup_cpu_distributed(cfg, launcher):
    """Prepare ``cfg`` for a distributed run when no GPU is visible; a no-op on GPU machines or without a launcher.

    Initialises a gloo process group (``pytorch``: torchrun's variables; ``slurm``: SLURM's), records the backend in
    ``cfg.env_cfg.dist_cfg`` and selects :class:`CPUDistributedDataParallel` as the model wrapper, keeping
    ``find_unused_parameters`` and any other wrapper options the config sets.

    Args:
        cfg (mmengine.Config): The loaded config (modified in place).
        launcher (str): ``none``, ``pytorch``, ``slurm`` or ``mpi``.

    Returns:
        bool: Whether the CPU path was set up.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher == 'slurm':
        _slurm_env()
    elif launcher != 'pytorch':
        raise NotImplementedError(f'CPU distributed runs support --launcher pytorch or slurm, not {launcher!r}')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get('type', 'MMDistributedDataParallel') != 'MMDistributedDataParallel':
        raise ValueError(f'model_wrapper_cfg type {wrapper["type"]!r} has no CPU variant here')
    wrapper['type'] = 'CPUDistributedDataParallel'
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return True
