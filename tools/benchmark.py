"""Speed and memory of an mmoverlock detector / segmentor: inference images/s, training step time, peak memory.

Runs the config's model on synthetic batches of a given size (no dataset needed, so any resolution can be measured):

* inference: ``model(inputs, data_samples, mode='predict')`` under ``torch.no_grad`` in eval mode, post-processing
  included (NMS, mask pasting / resizing of the logits);
* training: one full optimisation step (``mode='loss'``, backward, the config's optimizer wrapper), with synthetic
  ground truth (3 boxes + box masks per image for detectors, random labels for segmentors);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the process's peak resident set (VmHWM),
  reset before each phase through ``/proc/self/clear_refs`` where the kernel allows it.

Inputs are random, already-normalised images (the data preprocessor is skipped); pretrained weights are not loaded.

Usage:
    python tools/benchmark.py CONFIG --shape 800 1333 --batch-size 1 --iters 3 --warmup 1 --out bench.json
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import time

import numpy as np
import torch
from mmengine.config import DictAction

from get_flops import build_model

PHASES = ('infer', 'train')


def _meta(height, width):
    return dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0), flip=False)


def num_classes_of(model, task):
    """Number of classes of the model's (first) box head or decode head."""
    if task == 'mmseg':
        return model.decode_head.num_classes
    head = model.roi_head.bbox_head
    return (head[0] if isinstance(head, torch.nn.ModuleList) else head).num_classes


def make_batch(task, num_classes, batch_size, height, width, with_gt, device, seed=0):
    """Random normalised images and data samples (with synthetic ground truth when ``with_gt``)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, height, width, generator=gen).to(device)
    samples = []
    for _ in range(batch_size):
        if task == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            sample = DetDataSample(metainfo=_meta(height, width))
            if with_gt:
                xy = torch.rand(3, 2, generator=gen) * torch.tensor([width * 0.6, height * 0.6])
                wh = (0.1 + 0.3 * torch.rand(3, 2, generator=gen)) * torch.tensor([width, height])
                boxes = torch.cat([xy, xy + wh], dim=1)
                masks = np.zeros((3, height, width), np.uint8)
                for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                    masks[i, y0:y1, x0:x1] = 1
                sample.gt_instances = InstanceData(
                    bboxes=boxes.to(device), labels=torch.randint(num_classes, (3, ), generator=gen).to(device),
                    masks=BitmapMasks(masks, height, width))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=_meta(height, width))
            if with_gt:
                labels = torch.randint(num_classes, (1, height, width), generator=gen)
                sample.gt_sem_seg = PixelData(data=labels.to(device))
        samples.append(sample)
    return inputs, samples


class PeakMemory:
    """Peak memory of one phase: CUDA allocator peak, or the process's peak RSS on the CPU (in MiB)."""

    def __init__(self, device):
        self.device = device

    def reset(self):
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0); without it the figure is the process peak so far
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            pass

    def peak_mib(self):
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open('/proc/self/status') as f:
                for line in f:
                    if line.startswith('VmHWM:'):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, iters, warmup, device):
    """Seconds per call of ``fn`` over ``iters`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + iters):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _summary(times, batch_size):
    mean = statistics.fmean(times)
    return dict(mean_s=mean, min_s=min(times), std_s=statistics.pstdev(times), iters=len(times),
                images_per_s=batch_size / mean)


def benchmark(config, shape, batch_size=1, iters=3, warmup=1, phases=PHASES, cfg_options=None, deploy=False,
              device=None):
    """Measure the phases; return the result dict written to JSON."""
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model, cfg = build_model(config, cfg_options, deploy)
    task = cfg.default_scope
    model.to(device)
    height, width = shape
    num_classes = num_classes_of(model, task)
    memory = PeakMemory(device)
    result = dict(config=config, task=task, shape=[height, width], batch_size=batch_size, deploy=deploy,
                  device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == 'cuda'
                  else platform.processor() or platform.machine(), torch_threads=torch.get_num_threads(),
                  torch=torch.__version__, params=sum(p.numel() for p in model.parameters()))

    if 'infer' in phases:
        inputs, samples = make_batch(task, num_classes, batch_size, height, width, False, device)
        model.eval()
        memory.reset()
        with torch.no_grad():
            times = _timed(lambda: model(inputs, samples, mode='predict'), iters, warmup, device)
        result['infer'] = dict(_summary(times, batch_size), peak_memory_mib=memory.peak_mib())

    if 'train' in phases:
        if deploy:
            raise ValueError('a deploy-form backbone cannot be trained; benchmark training without --deploy')
        from mmengine.optim import build_optim_wrapper
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        inputs, samples = make_batch(task, num_classes, batch_size, height, width, True, device)
        model.train()

        def step():
            losses = model(inputs, samples, mode='loss')
            loss, _ = model.parse_losses(losses)
            optim_wrapper.update_params(loss)

        memory.reset()
        times = _timed(step, iters, warmup, device)
        summary = _summary(times, batch_size)
        result['train'] = dict(step_s=summary.pop('mean_s'), **summary, peak_memory_mib=memory.peak_mib())
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Inference speed, training step time and peak memory')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=(512, 512), help='input size')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--iters', type=int, default=3, help='timed iterations per phase')
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations before timing')
    parser.add_argument('--phases', nargs='+', choices=PHASES, default=list(PHASES))
    parser.add_argument('--deploy', action='store_true', help='re-parameterised backbone (inference only)')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--out', default='benchmark.json', help='where to write the JSON result')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = benchmark(args.config, tuple(args.shape), args.batch_size, args.iters, args.warmup, args.phases,
                       args.cfg_options, args.deploy, args.device)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    for phase in PHASES:
        if phase in result:
            r = result[phase]
            speed = (f"{r['images_per_s']:.3f} images/s" if phase == 'infer' else f"{r['step_s']:.3f} s/step")
            print(f"{phase}: {speed} at batch {args.batch_size}, {args.shape[0]}x{args.shape[1]}, "
                  f"peak memory {r['peak_memory_mib']:.0f} MiB ({result['device']})")
    print(f'wrote {args.out}')
    return result


if __name__ == '__main__':
    main()
