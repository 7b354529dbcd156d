"""Data-parallel training on the CPU through mmengine's launcher (gloo), with SyncBN.

1. CPUSyncBatchNorm over 2 ranks equals BatchNorm over the concatenated batch: outputs, input and affine gradients,
   running statistics.
2. ``torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch`` (batch 2 per process, SyncBN) follows the
   loss trajectory of one process with batch 4: each iteration's loss of the single run equals the mean over ranks
   of the distributed run's losses, within float32 tolerance.
"""
import json
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from _helpers import SMOKE_SEG, TESTS_DIR, run_tool, write_config
from _helpers.dist_workers import sync_bn_worker

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_cpu_sync_batchnorm_matches_full_batch(tmp_path):
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 6, 5, 7, generator=gen) * 3 + 2
    grad_out = torch.randn(4, 6, 5, 7, generator=gen)
    mp.spawn(sync_bn_worker, args=(2, _free_port(), inputs, grad_out, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]
    assert {r['kind'] for r in ranks} == {'CPUSyncBatchNorm'}

    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(6, momentum=0.3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    x = inputs.clone().requires_grad_(True)
    out = reference(x)
    out.backward(grad_out)

    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r['out'] for r in ranks]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([r['grad'] for r in ranks]), x.grad, **close)
    torch.testing.assert_close(ranks[0]['weight_grad'] + ranks[1]['weight_grad'], reference.weight.grad, **close)
    torch.testing.assert_close(ranks[0]['bias_grad'] + ranks[1]['bias_grad'], reference.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r['running_mean'], reference.running_mean, **close)
        torch.testing.assert_close(r['running_var'], reference.running_var, **close)
        assert int(r['tracked']) == 1


# Deterministic variant of the smoke segmentation config: no random flip, no dropout, no shuffling, no validation,
# and the loss recorder; 3 iterations at a total batch of 4. Plain SGD instead of the config's AdamW: SGD's step is
# proportional to the gradient, so a wrong gradient reduction (a sum instead of DDP's mean, a missing rank) changes
# the trajectory, while Adam's step is scale-invariant and turns float noise in near-zero gradients (e.g. conv biases
# right before a BatchNorm) into full-size steps of random sign.
DDP_OVERRIDES = """
custom_imports = dict(imports=['mmoverlock', '_helpers.loss_recorder'], allow_failed_imports=False)
model = dict(decode_head=dict(dropout_ratio=0.0), auxiliary_head=dict(dropout_ratio=0.0))
train_dataloader = dict(
    batch_size={batch}, num_workers=0, persistent_workers=False, sampler=dict(shuffle=False),
    dataset=dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                           dict(type='PackSegInputs')]))
train_cfg = dict(max_iters=3, val_interval=1000)
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=3)]
custom_hooks = [dict(type='LossRecorderHook', out_dir={out_dir!r})]
default_hooks = dict(checkpoint=dict(interval=1000, save_last=False), logger=dict(interval=1))
"""


def test_two_processes_match_one_with_twice_the_batch(shapes_workdir, tmp_path):
    single_dir, ddp_dir = tmp_path / 'single', tmp_path / 'ddp'
    single_dir.mkdir()
    ddp_dir.mkdir()
    single_cfg = write_config(tmp_path / 'single.py', SMOKE_SEG, DDP_OVERRIDES.format(batch=4, out_dir=str(single_dir)))
    ddp_cfg = write_config(tmp_path / 'ddp.py', SMOKE_SEG, DDP_OVERRIDES.format(batch=2, out_dir=str(ddp_dir)))

    # the configs import the loss recorder from tests/_helpers, so the training processes need tests/ importable;
    # run_tool hides any GPU, so both runs take the CPU path (gloo, CPU SyncBN) on a GPU machine too
    env = dict(PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get('PYTHONPATH')])))
    run_tool(['tools/train.py', single_cfg, '--work-dir', single_dir], cwd=shapes_workdir, env=env)
    run_tool(['tools/train.py', ddp_cfg, '--work-dir', ddp_dir, '--launcher', 'pytorch'], cwd=shapes_workdir,
             env=env, launcher=[sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                                '--master_port', str(_free_port())])

    single_run = json.loads((single_dir / 'losses_rank0.json').read_text())
    rank_runs = [json.loads((ddp_dir / f'losses_rank{r}.json').read_text()) for r in range(2)]
    # every BatchNorm (backbone: sync_bn='torch'; heads: SyncBN) is synchronised in the 2-process run; one process
    # has plain BatchNorms (mmengine reverts the heads' SyncBN to its _BatchNormXd when not distributed)
    assert set(single_run['norm_types']) <= {'BatchNorm2d', '_BatchNormXd'} and single_run['world_size'] == 1
    assert all(r['norm_types'] == ['CPUSyncBatchNorm'] and r['world_size'] == 2 for r in rank_runs)
    single = single_run['losses']
    ranks = [r['losses'] for r in rank_runs]
    ddp = [(a + b) / 2 for a, b in zip(*ranks)]
    assert len(single) == len(ddp) == 3
    assert ranks[0] != ranks[1]  # the two ranks did see different images
    assert single[0] != pytest.approx(single[2], rel=1e-3)  # and training moved the loss
    assert ddp == pytest.approx(single, rel=2e-4), f'1 process x batch 4: {single}; 2 processes x batch 2: {ddp}'
