"""Speed and peak memory of detectors / segmentors on synthetic batches (no dataset, so any resolution), several
configs side by side in one run (e.g. Mask R-CNN with OverLoCK-T against mmdet's Mask R-CNN Swin-T).

* inference: ``model(inputs, data_samples, mode='predict')`` under ``torch.no_grad`` in eval mode, post-processing
  included (NMS, mask pasting / resizing of the logits);
* training: one full optimisation step (``mode='loss'``, backward, the config's optimizer wrapper), with synthetic
  ground truth (:func:`mmoverlock.apis.dummy_batch`);
* time: rounds interleaved across the configs (:func:`~.measure.interleaved_times`), medians;
* peak memory: :data:`~.measure.PEAK_MEMORY_DEFINITION`, each (config, phase) in a fresh process on the CPU.

Inputs are random, already-normalised images (the data preprocessor is skipped); pretrained weights are not loaded.
"""
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..apis import build_model, dummy_batch, num_classes_of, task_of
from .measure import (PEAK_MEMORY_DEFINITION, interleaved_times, machine_info, peak_memory_in_fresh_process,
                      peak_memory_mib, ratio, record, switch_mode)

#: The phases :func:`benchmark_models` can measure.
PHASES = ('infer', 'train')


class ModelUnderTest:
    """A config's model (its own initialisation) and a fixed synthetic batch per phase: the calls a benchmark times.

    Args:
        config (str): Config file path, or ``'mmdet::...'``.
        shape (tuple[int, int]): Input (H, W).
        batch_size (int): Images per batch. Defaults to ``1``.
        cfg_options (dict, optional): Overrides merged into the config. Defaults to ``None``.
        deploy (bool): Re-parameterised backbone (inference only). Defaults to ``False``.
        device (str | torch.device): Where the model runs. Defaults to ``'cpu'``.
    """

    def __init__(self, config: str, shape: Tuple[int, int], batch_size: int = 1, cfg_options: Optional[dict] = None,
                 deploy: bool = False, device: Union[str, torch.device] = 'cpu'):
        self.device = torch.device(device)
        self.model, self.cfg = build_model(config, cfg_options, deploy=deploy)
        self.model.to(self.device)
        self.task = task_of(self.cfg)
        self.shape, self.batch_size, self.deploy = tuple(shape), batch_size, deploy
        self._optim_wrapper = None
        self._batches = {}

    def _batch(self, phase: str):
        if phase not in self._batches:
            classes = num_classes_of(self.model, self.task) if phase == 'train' else None
            self._batches[phase] = dummy_batch(self.task, self.batch_size, *self.shape, classes, self.device)
        return self._batches[phase]

    def infer(self):
        switch_mode(self.model, False)
        inputs, samples = self._batch('infer')
        with torch.no_grad():
            return self.model(inputs, samples, mode='predict')

    def train_step(self) -> None:
        if self.deploy:
            raise ValueError('a deploy-form backbone cannot be trained; benchmark training without deploy')
        if self._optim_wrapper is None:
            from mmengine.optim import build_optim_wrapper
            self._optim_wrapper = build_optim_wrapper(self.model, self.cfg.optim_wrapper)
        switch_mode(self.model, True)
        inputs, samples = self._batch('train')
        losses = self.model(inputs, samples, mode='loss')
        loss, _ = self.model.parse_losses(losses)
        self._optim_wrapper.update_params(loss)

    def phase(self, name: str) -> Callable[[], object]:
        """The call of a phase of :data:`PHASES`."""
        if name not in PHASES:
            raise ValueError(f'unknown phase {name!r}; expected one of {PHASES}')
        return self.infer if name == 'infer' else self.train_step


def phase_call(config: str, shape: Sequence[int], batch_size: int, phase: str, cfg_options: Optional[dict] = None,
               deploy: bool = False, device: str = 'cpu') -> Callable[[], object]:
    """The factory a fresh memory-measuring process calls (:func:`~.measure.peak_memory_in_fresh_process`)."""
    return ModelUnderTest(config, tuple(shape), batch_size, cfg_options, deploy, device).phase(phase)


def config_label(config: str) -> str:
    """A config's name in tables: its file name without ``.py``."""
    return osp.splitext(osp.basename(config.partition('::')[2] or config))[0]


def benchmark_models(configs: Sequence[str], shape: Tuple[int, int], batch_size: int = 1, rounds: int = 3,
                     warmup: int = 1, phases: Sequence[str] = PHASES, cfg_options: Optional[dict] = None,
                     deploy: bool = False, device: Union[str, torch.device, None] = None,
                     memory: bool = True) -> dict:
    """Measure the phases of several configs' models side by side; ratios are to the first config.

    Args:
        configs (Sequence[str]): Config paths (or ``'mmdet::...'``); the first is the baseline of the ratios.
        shape (tuple[int, int]): Input (H, W).
        batch_size (int): Images per batch. Defaults to ``1``.
        rounds (int): Timed calls per model and phase, interleaved across the models. Defaults to ``3``.
        warmup (int): Untimed calls of each first. Defaults to ``1``.
        phases (Sequence[str]): Any of :data:`PHASES`. Defaults to both.
        cfg_options (dict, optional): Overrides merged into every config. Defaults to ``None``.
        deploy (bool): Re-parameterised backbones (inference only). Defaults to ``False``.
        device (str | torch.device, optional): ``cuda`` when available if ``None``.
        memory (bool): Measure peak memory too. Defaults to ``True``.

    Returns:
        dict: The settings, the machine, and per model (by :func:`config_label`) its config, task, parameter count
        and per phase the timing summary (``median_s``, ``images_per_s``, ...), ``peak_memory_mib`` and the ratios
        to the baseline (``time_ratio``, ``memory_ratio``).
    """
    if not configs:
        raise ValueError('benchmark_models: configs is empty; expected at least one config path')
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        raise ValueError(f'benchmark_models: phases must be a non-empty subset of {PHASES}, got {list(phases)}')
    if deploy and 'train' in phases:
        raise ValueError('a deploy-form backbone cannot be trained; benchmark training without deploy')
    labels = [config_label(c) for c in configs]
    if len(set(labels)) != len(labels):
        raise ValueError(f'benchmark_models: configs must have distinct file names, got {labels}')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    height, width = shape
    result = dict(shape=[height, width], batch_size=batch_size, deploy=deploy, device=str(device), rounds=rounds,
                  warmup=warmup, phases=list(phases), baseline=labels[0], machine=machine_info(device.type),
                  memory_definition=PEAK_MEMORY_DEFINITION if memory else None, models={})
    runs = {}
    for label, config in zip(labels, configs):
        runs[label] = ModelUnderTest(config, (height, width), batch_size, cfg_options, deploy, device)
        result['models'][label] = dict(config=config, task=runs[label].task,
                                       params=sum(p.numel() for p in runs[label].model.parameters()))
    for phase in phases:
        timings = interleaved_times({label: run.phase(phase) for label, run in runs.items()}, rounds, warmup, device)
        for label, timing in timings.items():
            summary = timing.summary()
            summary['images_per_s'] = batch_size / summary['median_s']
            if phase == 'train':
                summary['step_s'] = summary['median_s']
            result['models'][label][phase] = summary
    if memory and device.type == 'cuda':  # the allocator's own peak: in this process, after the timing
        for label, run in runs.items():
            for phase in phases:
                result['models'][label][phase]['peak_memory_mib'] = peak_memory_mib(run.phase(phase),
                                                                                    device)['peak_mib']
    del runs  # on the CPU, each (config, phase) is measured in a fresh process that builds its own model
    if memory and device.type == 'cpu':
        for label, config in zip(labels, configs):
            for phase in phases:
                kwargs = dict(config=config, shape=[height, width], batch_size=batch_size, phase=phase,
                              cfg_options=cfg_options, deploy=deploy, device='cpu')
                result['models'][label][phase]['peak_memory_mib'] = peak_memory_in_fresh_process(
                    f'{__name__}:phase_call', kwargs, threads=torch.get_num_threads())['peak_mib']
    base = result['models'][labels[0]]
    for label in labels:
        for phase in phases:
            row = result['models'][label][phase]
            row['time_ratio'] = ratio(row['median_s'], base[phase]['median_s'])
            row['memory_ratio'] = ratio(row.get('peak_memory_mib'), base[phase].get('peak_memory_mib'))
    return result


METRICS = (('infer', 'median_s', 'time_ratio', 'inference s'), ('train', 'median_s', 'time_ratio', 'training step s'),
           ('infer', 'peak_memory_mib', 'memory_ratio', 'inference peak MiB'),
           ('train', 'peak_memory_mib', 'memory_ratio', 'training peak MiB'))


def benchmark_records(result: dict) -> List[dict]:
    """The figures of a :func:`benchmark_models` result as :func:`~.measure.record` rows (for tables)."""
    rows = []
    for label, entry in result['models'].items():
        for phase, key, ratio_key, metric in METRICS:
            if phase in entry and entry[phase].get(key) is not None:
                rows.append(record(label, metric, entry[phase][key], entry[phase].get(ratio_key)))
    return rows


def benchmark_table(result: dict) -> Tuple[List[str], List[List[str]]]:
    """Columns and rows of one run's markdown table: per model, each metric with its ratio to the baseline."""
    from .measure import with_ratio
    metrics = [m for m in METRICS if m[0] in result['phases'] and (m[1] != 'peak_memory_mib'
                                                                   or result['memory_definition'])]
    columns = ['model', 'params (M)'] + [m[3] for m in metrics]
    rows = []
    for label, entry in result['models'].items():
        cells = [label, f"{entry['params'] / 1e6:.1f}"]
        for phase, key, ratio_key, _ in metrics:
            value = entry[phase].get(key)
            cells.append(with_ratio(value, entry[phase].get(ratio_key), '{:.3f}' if key == 'median_s' else '{:.0f}'))
        rows.append(cells)
    return columns, rows
