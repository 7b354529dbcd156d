"""Synthetic batches for running a detector or segmentor without a dataset (FLOP counting, benchmarks, tests).

Images are random and already normalised (the data preprocessor is skipped); the data samples carry the metainfo
that mmdet's and mmseg's forward passes read, and optionally synthetic ground truth for the ``loss`` mode.
"""
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn


def dummy_metainfo(height: int, width: int) -> dict:
    """Metainfo of an unscaled, unflipped ``height`` x ``width`` image that fills its padded batch."""
    return dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0), flip=False)


def num_classes_of(model: nn.Module, task: str) -> int:
    """Number of classes of a segmentor's decode head or of a detector's (first) box head."""
    if task == 'mmseg':
        return model.decode_head.num_classes
    head = model.roi_head.bbox_head
    return (head[0] if isinstance(head, nn.ModuleList) else head).num_classes


def _det_ground_truth(gen: torch.Generator, num_classes: int, height: int, width: int, device):
    """Three boxes inside the image, with box-shaped masks and random labels."""
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    xy = torch.rand(3, 2, generator=gen) * torch.tensor([width * 0.6, height * 0.6])
    wh = (0.1 + 0.3 * torch.rand(3, 2, generator=gen)) * torch.tensor([width, height])
    boxes = torch.cat([xy, xy + wh], dim=1)
    masks = np.zeros((3, height, width), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    return InstanceData(bboxes=boxes.to(device), labels=torch.randint(num_classes, (3, ), generator=gen).to(device),
                        masks=BitmapMasks(masks, height, width))


def dummy_data_samples(task: str, batch_size: int, height: int, width: int, num_classes: Optional[int] = None,
                       device: Union[str, torch.device] = 'cpu', generator: Optional[torch.Generator] = None) -> List:
    """One ``DetDataSample`` (``task='mmdet'``) or ``SegDataSample`` (``'mmseg'``) per image, with
    :func:`dummy_metainfo` and, given ``num_classes``, synthetic ground truth drawn from ``generator``
    (detection: 3 boxes with box masks per image; segmentation: a random label map)."""
    if task == 'mmdet':
        from mmdet.structures import DetDataSample as DataSample
    elif task == 'mmseg':
        from mmseg.structures import SegDataSample as DataSample
    else:
        raise ValueError(f"task must be 'mmdet' or 'mmseg', got {task!r}")
    samples = []
    for _ in range(batch_size):
        sample = DataSample(metainfo=dummy_metainfo(height, width))
        if num_classes is not None and task == 'mmdet':
            sample.gt_instances = _det_ground_truth(generator, num_classes, height, width, device)
        elif num_classes is not None:
            from mmengine.structures import PixelData
            labels = torch.randint(num_classes, (1, height, width), generator=generator)
            sample.gt_sem_seg = PixelData(data=labels.to(device))
        samples.append(sample)
    return samples


def dummy_batch(task: str, batch_size: int, height: int, width: int, num_classes: Optional[int] = None,
                device: Union[str, torch.device] = 'cpu', seed: int = 0) -> Tuple[torch.Tensor, List]:
    """Random normalised images and their data samples, deterministic in ``seed``.

    Args:
        task (str): ``'mmdet'`` or ``'mmseg'``.
        batch_size (int): Images in the batch.
        height (int): Image height.
        width (int): Image width.
        num_classes (int, optional): Add synthetic ground truth with labels below this (for the ``loss`` mode);
            ``None`` for inference batches. Defaults to ``None``.
        device (str | torch.device): Where the tensors go. Defaults to ``'cpu'``.
        seed (int): Seed of the generator. Defaults to ``0``.

    Returns:
        tuple[Tensor, list]: Inputs of shape (batch_size, 3, height, width) and :func:`dummy_data_samples`.
    """
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 3, height, width, generator=gen).to(device)
    return inputs, dummy_data_samples(task, batch_size, height, width, num_classes, device, gen)
