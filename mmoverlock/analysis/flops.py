"""Parameters and FLOPs of OverLoCK backbones and of the detectors / segmentors built on them.

FLOPs come from mmengine's jit-trace counter (:class:`mmengine.analysis.FlopAnalyzer`, fvcore's rules: one
multiply-add = one FLOP, element-wise ops not counted). That counter does not know the ContMix core, which is a custom
operator (``mmoverlock::contmix_forward``, or the ``ContMixTorch`` autograd Function of the pure-torch fallback) and
would otherwise be skipped as "unsupported". :func:`contmix_flop_jit` counts it like the aggregation it is: every
output value [B, G, H, W, C] is a weighted sum over the K*K taps, i.e. ``B*G*H*W*C*K^2`` multiply-adds (the
K^2-wide bias and softmax are element-wise and, like every other element-wise op, not counted).

Detectors are traced in ``tensor`` mode: backbone, neck, RPN and RoI heads on the RPN's proposals, as mmdet's
get_flops does.
"""
from collections import Counter
from contextlib import contextmanager
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..apis import build_model, dummy_data_samples

#: The ContMix core as the jit tracer names it: the compiled op and the pure-torch fallback's autograd Function.
CONTMIX_OPS = ('mmoverlock::contmix_forward', 'prim::PythonOp.ContMixTorch')
#: Input size (H, W) per task when none is given: mmdet's COCO convention and the ADE20K crop.
DEFAULT_SHAPES = dict(mmdet=(800, 1333), mmseg=(512, 512))


def contmix_flop_jit(inputs, outputs) -> Counter:
    """FLOP handle of the ContMix core: ``numel(value) * K^2`` (inputs: weights [..., K*K], value [B, G, H, W, C]).

    Returned under the single name ``contmix`` whichever implementation was traced.
    """
    from mmengine.analysis.jit_handles import get_shape
    weights, value = get_shape(inputs[0]), get_shape(inputs[1])
    numel = 1
    for size in value:
        numel *= size
    return Counter(contmix=numel * weights[-1])


def flop_analyzer(module: nn.Module, inputs: tuple):
    """A :class:`FlopAnalyzer` of ``module(*inputs)`` that counts the ContMix core, its warnings silenced."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(module, inputs)
    analyzer.set_op_handle(**{name: contmix_flop_jit for name in CONTMIX_OPS})
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    return analyzer


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_complexity(backbone: nn.Module, image: torch.Tensor) -> dict:
    """Parameters and FLOPs of a backbone on ``image`` (B, 3, H, W).

    Returns:
        dict: ``backbone_params``, ``backbone_flops``, ``contmix_flops`` (part of the backbone's) and
        ``uncounted_ops`` (the ops the counter skipped, sorted).

    Raises:
        RuntimeError: When the ContMix core was traced under a name missing from :data:`CONTMIX_OPS` (it would
            silently count as zero).
    """
    with torch.no_grad():
        analyzer = flop_analyzer(backbone, (image, ))
        flops = analyzer.total()
        contmix_flops = analyzer.by_operator().get('contmix', 0)
        unsupported = analyzer.unsupported_ops()
    unknown_contmix = [op for op in unsupported if 'contmix' in op.lower()]
    if unknown_contmix:
        raise RuntimeError(f'ContMix traced as {unknown_contmix}, which the FLOP counter does not count: add it to '
                           'mmoverlock.analysis.flops.CONTMIX_OPS')
    return dict(backbone_params=_num_params(backbone), backbone_flops=flops,
                contmix_flops=contmix_flops, uncounted_ops=sorted(unsupported))


@contextmanager
def _tensor_mode(model: nn.Module, data_samples: list):
    """Make ``model(image)`` run ``model(image, data_samples, mode='tensor')``, the form a tracer can call."""
    forward = model.forward
    model.forward = partial(forward, data_samples=data_samples, mode='tensor')
    try:
        yield model
    finally:
        model.forward = forward


@contextmanager
def _mask_rois_seen(model: nn.Module):
    """Record how many RoIs the (first) mask head sees: mmdet 3's tensor mode runs it on every RPN proposal."""
    roi_head = getattr(model, 'roi_head', None)
    seen = []
    if roi_head is None or not getattr(roi_head, 'with_mask', False):
        yield seen
        return
    head = roi_head.mask_head[0] if isinstance(roi_head.mask_head, nn.ModuleList) else roi_head.mask_head
    hook = head.register_forward_hook(lambda _module, args, _out: seen.append(int(args[0].shape[0])))
    try:
        yield seen
    finally:
        hook.remove()


def model_flops(model: nn.Module, task: str, image: torch.Tensor) -> dict:
    """FLOPs of a whole detector / segmentor in tensor mode on ``image`` (1, 3, H, W).

    Returns:
        dict: ``flops``, ``uncounted_ops``, and for detectors with masks ``mask_head_flops`` (all mask heads) and
        ``mask_rois`` (the RoIs they ran on); those two are ``None`` otherwise.
    """
    samples = dummy_data_samples(task, image.shape[0], image.shape[2], image.shape[3])
    mask = dict(mask_head_flops=None, mask_rois=None)
    with torch.no_grad(), _tensor_mode(model, samples), _mask_rois_seen(model) as rois_seen:
        analyzer = flop_analyzer(model, (image, ))
        flops = analyzer.total()
        if rois_seen:
            mask = dict(mask_head_flops=analyzer.by_module()['roi_head.mask_head'], mask_rois=rois_seen[-1])
    return dict(flops=flops, uncounted_ops=sorted(analyzer.unsupported_ops()), **mask)


def flops_on_100_mask_rois(flops: Optional[int], mask_head_flops: Optional[int] = None,
                           mask_rois: Optional[int] = None) -> Optional[float]:
    """Model FLOPs with the mask heads counted on 100 RoIs, the convention of published detector FLOPs.

    mmdet 2.x's ``forward_dummy`` (which papers such as Swin's and OverLoCK's used with fvcore) ran the mask heads on
    the first 100 proposals; mmdet 3's tensor mode runs them on all (up to 1000 per image), so for Cascade Mask R-CNN
    most of the traced FLOPs are mask heads. Mask-head FLOPs are linear in the number of RoIs. ``None`` without
    mask heads.
    """
    if flops is None or not mask_rois:
        return None
    return flops - mask_head_flops + mask_head_flops * min(1.0, 100 / mask_rois)


def config_complexity(config: str, shape: Optional[Sequence[int]] = None, cfg_options: Optional[dict] = None,
                      deploy: bool = False, backbone_only: bool = False) -> dict:
    """Params and FLOPs of a config's model and of its backbone at batch 1.

    The model has its own initialisation (no pretrained download): it decides how many proposals a random input
    yields, which the detector's FLOPs depend on. The input is a random image already normalised.

    Args:
        config (str): Config file path.
        shape (tuple[int, int], optional): Input (H, W); :data:`DEFAULT_SHAPES` of the task when ``None``.
        cfg_options (dict, optional): Overrides merged into the config. Defaults to ``None``.
        deploy (bool): Count the re-parameterised backbone. Defaults to ``False``.
        backbone_only (bool): Trace the backbone only (faster; ``flops`` is then ``None``). Defaults to ``False``.

    Returns:
        dict: ``params`` / ``flops`` of the model and ``backbone_params`` / ``backbone_flops``,
        ``contmix_flops``, for detectors with masks the mask heads' share (``mask_head_flops``, ``mask_rois``,
        ``flops_mask_head_on_100_rois``), the ops the counter skipped, and the settings used.
    """
    model, cfg = build_model(config, cfg_options, init=not backbone_only, deploy=deploy)
    task = cfg.default_scope
    height, width = shape or DEFAULT_SHAPES[task]
    image = torch.rand(1, 3, height, width)
    backbone = backbone_complexity(model.backbone, image)
    whole = dict(flops=None, uncounted_ops=backbone['uncounted_ops'], mask_head_flops=None, mask_rois=None)
    if not backbone_only:
        whole = model_flops(model, task, image)
    mask = dict(mask_head_flops=whole['mask_head_flops'], mask_rois=whole['mask_rois'])
    return dict(
        config=config,
        task=task,
        shape=[height, width],
        deploy=deploy,
        params=_num_params(model),
        flops=whole['flops'],
        backbone_params=backbone['backbone_params'],
        backbone_flops=backbone['backbone_flops'],
        contmix_flops=backbone['contmix_flops'],
        **mask,
        flops_mask_head_on_100_rois=flops_on_100_mask_rois(whole['flops'], **mask),
        uncounted_ops=whole['uncounted_ops'],
        note='FLOPs = multiply-adds (fvcore convention) at batch 1; element-wise ops are not counted')
