"""Smoke train -> checkpoint -> --resume -> test.py (and mim test) -> demo, through the real command-line tools and
mmdet/mmseg runners, on a small copy of the bundled data (run from a directory holding ``data/generated``)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from _helpers import CPU_ONLY, SMOKE_DET, SMOKE_SEG, run_tool
from mmoverlock.apis import build_model

# Runs command-line tools, whole models or configs: left out of `make test-fast`.
pytestmark = pytest.mark.slow

DET_METRICS = ('coco/bbox_mAP', 'coco/segm_mAP')
MIM = osp.join(osp.dirname(sys.executable), 'mim')


def _last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def test_detection_pipeline(shapes_workdir):
    work = shapes_workdir / 'work_det'
    common = ['train_dataloader.batch_size=2', 'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=1',
              'default_hooks.logger.interval=1', 'param_scheduler.0.end=2']
    run_tool(['tools/train.py', SMOKE_DET, '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=1', *common],
             cwd=shapes_workdir)
    first = _last_checkpoint(work)
    assert osp.basename(first) == 'epoch_1.pth'
    # bare --resume: continues at epoch 2 from the latest checkpoint's weights, optimizer and scheduler state
    out = run_tool(['tools/train.py', SMOKE_DET, '--work-dir', work, '--resume', '--cfg-options',
                    'train_cfg.max_epochs=2', *common], cwd=shapes_workdir)
    assert 'resumed epoch: 1, iter: 4' in out
    second = _last_checkpoint(work)
    assert osp.basename(second) == 'epoch_2.pth'
    state = torch.load(second, map_location='cpu', weights_only=False)
    assert state['meta']['epoch'] == 2 and state['meta']['iter'] == 8  # 8 images / batch 2 x 2 epochs
    assert state['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle', 'ring')

    metrics_json = work / 'metrics.json'
    # score_thr 0: after 8 steps from scratch every score is below the default 0.05, and CocoMetric reports nothing
    # at all for a model without detections; with the threshold at 0 the whole evaluation path runs.
    run_tool(['tools/test.py', SMOKE_DET, second, '--work-dir', work / 'test', '--metrics-json', metrics_json,
              '--out', work / 'preds.pkl', '--cfg-options', 'test_dataloader.batch_size=2',
              'model.test_cfg.rcnn.score_thr=0.0'], cwd=shapes_workdir)
    metrics = json.loads(metrics_json.read_text())
    assert all(0.0 <= metrics[k] <= 1.0 for k in DET_METRICS)
    assert osp.getsize(work / 'preds.pkl') > 0

    run_tool(['demo/image_demo.py', 'data/generated/coco/held_out', SMOKE_DET, second, '--out-dir', work / 'demo',
              '--score-thr', '0.0'], cwd=shapes_workdir)
    pictures = os.listdir(work / 'demo' / 'vis')
    assert sorted(pictures) == sorted(os.listdir(shapes_workdir / 'data' / 'generated' / 'coco' / 'held_out'))


def test_segmentation_pipeline(shapes_workdir):
    work = shapes_workdir / 'work_seg'
    common = ['train_dataloader.batch_size=2', 'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=2',
              'default_hooks.logger.interval=1', 'param_scheduler.0.end=1', 'param_scheduler.1.begin=1']
    run_tool(['tools/train.py', SMOKE_SEG, '--work-dir', work, '--cfg-options', 'train_cfg.max_iters=2',
              'param_scheduler.1.end=2', *common], cwd=shapes_workdir)
    first = _last_checkpoint(work)
    assert osp.basename(first) == 'iter_2.pth'
    # resume from an explicit checkpoint (mmdet's form of the flag)
    out = run_tool(['tools/train.py', SMOKE_SEG, '--work-dir', work, '--resume', first, '--cfg-options',
                    'train_cfg.max_iters=4', 'param_scheduler.1.end=4', *common], cwd=shapes_workdir)
    assert 'resumed epoch: 0, iter: 2' in out
    checkpoint = _last_checkpoint(work)
    assert osp.basename(checkpoint) == 'iter_4.pth'
    assert torch.load(checkpoint, map_location='cpu', weights_only=False)['meta']['iter'] == 4

    metrics_json = work / 'metrics.json'
    run_tool(['tools/test.py', SMOKE_SEG, checkpoint, '--work-dir', work / 'test', '--metrics-json', metrics_json,
              '--out', work / 'pred_png'], cwd=shapes_workdir)
    metrics = json.loads(metrics_json.read_text())
    assert 0.0 <= metrics['mIoU'] <= 100.0
    assert len(os.listdir(work / 'pred_png')) == 4

    run_tool(['demo/image_demo.py', 'data/generated/ade/held_out', SMOKE_SEG, checkpoint, '--out-dir', work / 'demo'],
             cwd=shapes_workdir)
    assert len(os.listdir(work / 'demo' / 'vis')) == 2


@pytest.mark.skipif(not osp.exists(MIM), reason='openmim is not installed beside this interpreter')
@pytest.mark.parametrize('package,config,metric,extra', [
    ('mmseg', SMOKE_SEG, 'mIoU', []),
    # score_thr 0 so the untrained detector's low-score boxes reach CocoMetric (see test_detection_pipeline)
    ('mmdet', SMOKE_DET, 'coco/bbox_mAP', ['--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0']),
])
def test_mim_test(shapes_workdir, tmp_path, package, config, metric, extra):
    """`mim test <package> CONFIG --checkpoint CKPT` (the package's own tools/test.py) evaluates an mmoverlock
    checkpoint saved with torch's default weights_only loading in mind."""
    model, cfg = build_model(config)
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(cfg.train_dataloader.dataset.metainfo))),
               checkpoint)
    proc = subprocess.run([MIM, 'test', package, config, '--checkpoint', str(checkpoint), '--work-dir',
                           str(tmp_path / 'mim'), *extra], cwd=shapes_workdir, env=dict(os.environ, **CPU_ONLY),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert metric in proc.stdout, proc.stdout[-4000:]
