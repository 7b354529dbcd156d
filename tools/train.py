"""Train a detector (mmdet) or a segmentor (mmseg) from an mmoverlock config; the task follows ``default_scope``.

The flags are those of mmdet's and mmseg's ``tools/train.py`` (``--resume`` takes mmdet's optional checkpoint path;
bare ``--resume`` resumes from the latest checkpoint of the work dir, as in both). With the configs' checkpoint hook
(:class:`~mmoverlock.engine.ResumableCheckpointHook`) a job killed at any moment resumes from its last complete
checkpoint, so a preempted job can be requeued with the same command plus ``--resume``. Distributed runs work the usual way
(``torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch``, NCCL on GPUs) and also on CPU-only machines,
where the gloo backend and a CPU SyncBatchNorm are set up by :mod:`mmoverlock.engine`.

Examples:
    python tools/train.py configs/_smoke_/upernet_overlock-pico_1xb8-smoke_shapes-128x128.py
    torchrun --nproc_per_node 8 tools/train.py configs/upernet/upernet_overlock-t_8xb2-160k_ade20k-512x512.py \
        --launcher pytorch
    srun -p PARTITION --ntasks 16 --ntasks-per-node 8 --gres gpu:8 python -u tools/train.py CONFIG --launcher slurm
"""
import argparse
import os

from mmengine.config import DictAction

from mmoverlock.engine import build_runner, load_runner_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train an mmoverlock detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False, help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or (bare flag) from the latest complete checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs (e.g. train_cfg.max_iters=10)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg, _task = load_runner_config(args.config, args.launcher, args.work_dir, args.cfg_options)

    if args.amp:
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp needs optim_wrapper type OptimWrapper, got {wrapper_type}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
