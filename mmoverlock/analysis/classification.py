"""ImageNet-style evaluation of a classifier: top-1 / top-5 accuracy and throughput over a folder of images.

The data pipeline is timm's, as in the authors' ``validate.py``: ``create_dataset`` on a folder laid out
``ROOT/<class>/<image>`` (class indices follow timm's natural sort of the folder names, which for ImageNet's synset
folders is the usual 0-999 order), ``create_loader`` with the model's evaluation transform from
``resolve_data_config`` (resize to ``input / crop_pct``, centre crop, ImageNet mean / std).
"""
import time
from typing import Dict, Optional

import torch
from timm.data import create_dataset, create_loader, resolve_data_config
from torch import nn
from tqdm import tqdm

#: The k of the second accuracy reported (top-5, as ImageNet results are quoted).
TOP_K = 5


def imagenet_folder_loader(data_dir: str, model: nn.Module, batch_size: int = 64, workers: int = 4,
                           device: torch.device = torch.device('cpu'), overrides: Optional[dict] = None):
    """A loader over ``data_dir`` with ``model``'s evaluation transform.

    Args:
        data_dir (str): ``ROOT/<class>/<image>``, or a folder with such a ``val`` / ``validation`` sub-folder.
        model (nn.Module): A timm model; its ``pretrained_cfg`` gives the transform.
        batch_size (int): Images per batch. Defaults to 64.
        workers (int): Loader processes. Defaults to 4.
        device (torch.device): Where the batches go (timm's prefetcher on CUDA). Defaults to the CPU.
        overrides (dict, optional): ``resolve_data_config`` arguments that replace the model's (``img_size``,
            ``crop_pct``, ``interpolation``, ...).

    Returns:
        tuple: The loader, the resolved data config (dict) and the class-name to index mapping.
    """
    data_config = resolve_data_config(dict(overrides or {}), model=model)
    dataset = create_dataset('', root=data_dir, split='validation', is_training=False)
    class_to_idx = dict(dataset.reader.class_to_idx)
    if len(dataset) == 0:
        raise FileNotFoundError(f'no images found under {data_dir!r} (expected ROOT/<class>/<image>)')
    loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=batch_size, is_training=False,
                           interpolation=data_config['interpolation'], mean=data_config['mean'],
                           std=data_config['std'], crop_pct=data_config['crop_pct'],
                           crop_mode=data_config.get('crop_mode'), num_workers=workers,
                           use_prefetcher=device.type == 'cuda', device=device, pin_memory=device.type == 'cuda',
                           persistent_workers=False)
    return loader, data_config, class_to_idx


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device: torch.device = torch.device('cpu'),
                        amp_dtype: Optional[torch.dtype] = None, progress: bool = True) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and throughput of ``model`` (in eval mode) over ``loader``.

    Args:
        model (nn.Module): Returns logits [B, num_classes] in eval mode.
        loader (Iterable): Batches of (images, class indices).
        device (torch.device): Where the model runs. Defaults to the CPU.
        amp_dtype (torch.dtype, optional): Run under autocast in this dtype. Defaults to ``None`` (full precision).
        progress (bool): Show a progress bar (tqdm, on stderr). Defaults to ``True``.

    Returns:
        dict: ``num_images``; ``top1`` and ``top5`` (``None`` with fewer than 5 classes); ``images_per_second``
        end to end (loading, transfer and model) and ``model_images_per_second`` (forward passes alone; the first
        batch's warm-up included); ``seconds``, the wall time of the loop.
    """
    model.eval()
    num_images = correct1 = correct5 = 0
    model_seconds = 0.
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc='eval', unit='batch', disable=not progress):
        images, targets = images.to(device), targets.to(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - tic
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise ValueError(f'evaluate_classifier: the model must return logits [B, num_classes] in eval mode, '
                             f'got {tuple(logits.shape)} for a batch of {targets.shape[0]}')
        k = min(TOP_K, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == targets[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        num_images += targets.shape[0]
    seconds = time.perf_counter() - start
    if num_images == 0:
        raise ValueError('evaluate_classifier: the loader gave no images')
    has_top5 = logits.shape[1] >= TOP_K
    return dict(num_images=num_images, top1=100. * correct1 / num_images,
                top5=100. * correct5 / num_images if has_top5 else None,
                images_per_second=num_images / seconds, model_images_per_second=num_images / model_seconds,
                seconds=seconds)
