"""Speed and peak memory of a detector / segmentor on synthetic batches (no dataset, so any resolution).

* inference: ``model(inputs, data_samples, mode='predict')`` under ``torch.no_grad`` in eval mode, post-processing
  included (NMS, mask pasting / resizing of the logits);
* training: one full optimisation step (``mode='loss'``, backward, the config's optimizer wrapper), with synthetic
  ground truth (:func:`mmoverlock.apis.dummy_batch`);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the process's peak resident set (VmHWM),
  reset before each phase through ``/proc/self/clear_refs`` where the kernel allows it.
"""
import platform
import statistics
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ..apis import build_model, dummy_batch, num_classes_of

#: The phases :func:`benchmark_model` can measure.
PHASES = ('infer', 'train')


class PeakMemory:
    """Peak memory of one phase: CUDA allocator peak, or the process's peak RSS on the CPU (in MiB).

    Args:
        device (torch.device): Where the measured work runs.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0); without it the figure is the process peak so far
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            pass

    def peak_mib(self) -> float:
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


def time_calls(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> List[float]:
    """Seconds per call of ``fn`` over ``iters`` calls after ``warmup`` untimed ones (CUDA synchronised)."""
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


def _summary(times: List[float], batch_size: int) -> dict:
    mean = statistics.fmean(times)
    return dict(mean_s=mean, min_s=min(times), std_s=statistics.pstdev(times), iters=len(times),
                images_per_s=batch_size / mean)


def benchmark_model(config: str, shape: Tuple[int, int], batch_size: int = 1, iters: int = 3, warmup: int = 1,
                    phases: Sequence[str] = PHASES, cfg_options: Optional[dict] = None, deploy: bool = False,
                    device: Union[str, torch.device, None] = None) -> dict:
    """Measure the phases of a config's model (its own initialisation, no pretrained download).

    Args:
        config (str): Config file path.
        shape (tuple[int, int]): Input (H, W).
        batch_size (int): Images per batch. Defaults to ``1``.
        iters (int): Timed iterations per phase. Defaults to ``3``.
        warmup (int): Untimed iterations before timing. Defaults to ``1``.
        phases (Sequence[str]): Any of :data:`PHASES`. Defaults to both.
        cfg_options (dict, optional): Overrides merged into the config. Defaults to ``None``.
        deploy (bool): Re-parameterised backbone (inference only). Defaults to ``False``.
        device (str | torch.device, optional): ``cuda`` when available if ``None``.

    Returns:
        dict: The settings, the device, the parameter count, and per phase the timings (``images_per_s`` /
        ``step_s``) with ``peak_memory_mib``.
    """
    if deploy and 'train' in phases:
        raise ValueError('a deploy-form backbone cannot be trained; benchmark training without deploy')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model, cfg = build_model(config, cfg_options, deploy=deploy)
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
        inputs, samples = dummy_batch(task, batch_size, height, width, device=device)
        model.eval()
        memory.reset()
        with torch.no_grad():
            times = time_calls(lambda: model(inputs, samples, mode='predict'), iters, warmup, device)
        result['infer'] = dict(_summary(times, batch_size), peak_memory_mib=memory.peak_mib())

    if 'train' in phases:
        from mmengine.optim import build_optim_wrapper
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        inputs, samples = dummy_batch(task, batch_size, height, width, num_classes, device)
        model.train()

        def step():
            losses = model(inputs, samples, mode='loss')
            loss, _ = model.parse_losses(losses)
            optim_wrapper.update_params(loss)

        memory.reset()
        times = time_calls(step, iters, warmup, device)
        summary = _summary(times, batch_size)
        result['train'] = dict(step_s=summary.pop('mean_s'), **summary, peak_memory_mib=memory.peak_mib())
    return result
