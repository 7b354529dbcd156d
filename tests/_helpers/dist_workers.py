"""Worker functions spawned by the distributed tests (they live here so spawned interpreters can import them)."""
import os

import torch
import torch.distributed as dist


def sync_bn_worker(rank, world_size, port, inputs, grad_out, out_dir):
    """One rank of the CPUSyncBatchNorm check: normalise this rank's slice, backprop, save what came out."""
    from mmoverlock.engine import convert_cpu_sync_batchnorm

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        bn = torch.nn.SyncBatchNorm(inputs.shape[1], momentum=0.3)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        bn = convert_cpu_sync_batchnorm(bn).train()
        part = inputs.chunk(world_size)[rank].clone().requires_grad_(True)
        out = bn(part)
        out.backward(grad_out.chunk(world_size)[rank])
        torch.save(dict(out=out.detach(), grad=part.grad, weight_grad=bn.weight.grad, bias_grad=bn.bias.grad,
                        running_mean=bn.running_mean, running_var=bn.running_var,
                        tracked=bn.num_batches_tracked, kind=type(bn).__name__),
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()
