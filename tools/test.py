"""Test (and evaluate) a detector or segmentor checkpoint from an mmoverlock config; the task follows ``default_scope``.

The flags are those of mmdet's and mmseg's ``tools/test.py``; ``--out`` keeps each package's meaning (mmdet: a
``.pkl`` of predictions, mmseg: a directory of prediction PNGs). One addition, ``--metrics-json FILE``, writes the
evaluation metrics to a JSON file (the runner's own JSON lands in a timestamped folder of the work dir), which is what
``tools/misc/smoke_train.py`` reads. Checkpoints of the authors' mmdet 2.x / mmseg 0.x releases load after
``tools/model_converters/convert_checkpoint.py``. Checkpoints load weights-only (:mod:`mmoverlock.checkpoint_io`): a
file whose pickle would run code is refused.

Examples:
    python tools/test.py CONFIG work_dirs/x/iter_300.pth --metrics-json work_dirs/x/metrics.json
    torchrun --nproc_per_node 2 tools/test.py CONFIG CKPT --launcher pytorch
"""
import argparse
import json
import os
import os.path as osp
import warnings
from copy import deepcopy

from mmengine.config import ConfigDict, DictAction

from mmoverlock.engine import build_runner, load_runner_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) an mmoverlock detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='mmdet: dump predictions to this .pkl; mmseg: save prediction PNGs to this directory')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory (under work_dir/timestamp) where painted images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--metrics-json', help='also write the evaluation metrics to this JSON file')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def enable_visualization(cfg, args, task):
    """Turn on the visualisation hook the way each package's test tool does (the output folder key differs)."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show / --show-dir need a visualization hook in default_hooks')
    hooks.visualization.draw = True
    if args.show:
        hooks.visualization.show = True
        hooks.visualization.wait_time = args.wait_time
    if args.show_dir:
        if task == 'mmdet':
            hooks.visualization.test_out_dir = args.show_dir
        else:
            cfg.visualizer.save_dir = args.show_dir


def enable_tta(cfg, task):
    """Wrap the model for test-time augmentation: mmdet's flip TTA by default, mmseg's ``tta_pipeline`` from config."""
    if task == 'mmseg':
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
        return
    if 'tta_model' not in cfg:
        warnings.warn('no tta_model in the config: using flip TTA with NMS 0.5')
        cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        cfg.tta_pipeline = deepcopy(dataset.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                               'scale_factor', 'flip', 'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def main(argv=None):
    args = parse_args(argv)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):  # before the model and data are built
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg, task = load_runner_config(args.config, args.launcher, args.work_dir, args.cfg_options)
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        enable_visualization(cfg, args, task)
    if args.tta:
        enable_tta(cfg, task)
    if args.out is not None and task == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    runner = build_runner(cfg)
    if args.out is not None and task == 'mmdet':
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl file for detection configs')
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    metrics = runner.test()
    if args.metrics_json and runner.rank == 0:
        os.makedirs(osp.dirname(osp.abspath(args.metrics_json)), exist_ok=True)
        with open(args.metrics_json, 'w') as f:
            json.dump({k: v.item() if hasattr(v, 'item') else v for k, v in metrics.items()}, f, indent=1)
    return metrics


if __name__ == '__main__':
    main()
