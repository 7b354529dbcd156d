"""Parameters and FLOPs of an mmoverlock detector / segmentor and of its OverLoCK backbone, ContMix core included.

FLOPs come from mmengine's jit-trace counter (:class:`mmengine.analysis.FlopAnalyzer`, fvcore's rules: one
multiply-add = one FLOP, element-wise ops not counted). That counter does not know the ContMix core, which is a custom
operator (``mmoverlock::contmix_forward``, or the ``_ContMixTorch`` autograd Function of the pure-torch fallback) and
would otherwise be skipped as "unsupported". :func:`contmix_flop_jit` counts it like the aggregation it is: every
output value [B, G, H, W, C] is a weighted sum over the K*K taps, i.e. ``B*G*H*W*C*K^2`` multiply-adds (the
K^2-wide bias and softmax are element-wise and, like every other element-wise op, not counted).

The input is a random tensor already normalised (the data preprocessor is skipped), ``--shape`` H W, batch 1.
Detectors are traced in ``tensor`` mode: backbone, neck, RPN and RoI heads on the RPN's proposals (with random
weights and inputs, as many as ``test_cfg.rpn.max_per_img`` allows), as mmdet's get_flops does.

Usage:
    python tools/get_flops.py CONFIG [--shape 800 1333] [--deploy] [--backbone-only] [--out flops.json]
"""
import argparse
import json
import os
import os.path as osp
from collections import Counter
from functools import partial

import torch
from mmengine.config import Config, DictAction

#: The ContMix core as the jit tracer names it: the compiled op and the pure-torch fallback's autograd Function.
CONTMIX_OPS = ('mmoverlock::contmix_forward', 'prim::PythonOp._ContMixTorch')
DEFAULT_SHAPES = dict(mmdet=(800, 1333), mmseg=(512, 512))


def contmix_flop_jit(inputs, outputs):
    """FLOP handle of the ContMix core: ``numel(value) * K^2`` (inputs: weights [..., K*K], value [B, G, H, W, C]).

    Returned under the single name ``contmix`` whichever implementation was traced.
    """
    from mmengine.analysis.jit_handles import get_shape
    weights, value = get_shape(inputs[0]), get_shape(inputs[1])
    numel = 1
    for size in value:
        numel *= size
    return Counter(contmix=numel * weights[-1])


def build_model(config, cfg_options=None, deploy=False, init=True):
    """Build the config's model in eval mode on the CPU, without downloading pretrained weights.

    ``init`` runs ``init_weights`` (the untrained model's real initialisation; it decides how many proposals a
    random input yields, which the detector's FLOPs depend on). mmengine's per-parameter init report is silenced.

    Returns:
        tuple[nn.Module, Config]: the model (SyncBN reverted to BN) and the loaded config, whose ``default_scope``
        (``mmdet`` / ``mmseg``) is the task.
    """
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    task = cfg.get('default_scope')
    if task not in DEFAULT_SHAPES:
        raise ValueError(f'config default_scope is {task!r}; expected mmdet or mmseg')
    cfg.model.backbone.init_cfg = None
    if 'pretrained' in cfg.model:
        cfg.model.pretrained = None
    init_default_scope(task)
    MMLogger.get_instance('mmoverlock_tools', log_level='WARNING')  # print_log(logger='current') goes here
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if init:
        model.init_weights()
    if deploy:
        model.backbone.switch_to_deploy()
    return model.eval(), cfg


def _data_samples(task, height, width):
    """Minimal metainfo the tensor-mode forward needs (image and pad shapes, unit scale factor)."""
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    if task == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    from mmseg.structures import SegDataSample
    return [SegDataSample(metainfo=meta)]


def count_flops(module, inputs):
    """Trace ``module(*inputs)`` and return its FlopAnalyzer with the ContMix handles set (warnings silenced)."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(module, inputs)
    analyzer.set_op_handle(**{name: contmix_flop_jit for name in CONTMIX_OPS})
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    return analyzer


def _watch_mask_rois(model):
    """Record how many RoIs the (first) mask head sees: mmdet 3's tensor mode runs it on every RPN proposal."""
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is None or not getattr(roi_head, 'with_mask', False):
        return [], None
    head = roi_head.mask_head[0] if isinstance(roi_head.mask_head, torch.nn.ModuleList) else roi_head.mask_head
    seen = []
    return seen, head.register_forward_hook(lambda _module, args, _out: seen.append(int(args[0].shape[0])))


def _on_100_mask_rois(flops, mask_head_flops=None, mask_rois=None):
    """Model FLOPs with the mask heads counted on 100 RoIs, the convention of published detector FLOPs.

    mmdet 2.x's ``forward_dummy`` (which papers such as Swin's and OverLoCK's used with fvcore) ran the mask heads on
    the first 100 proposals; mmdet 3's tensor mode runs them on all (up to 1000 per image), so for Cascade Mask R-CNN
    most of the traced FLOPs are mask heads. Mask-head FLOPs are linear in the number of RoIs.
    """
    if flops is None or not mask_rois:
        return None
    return flops - mask_head_flops + mask_head_flops * min(1.0, 100 / mask_rois)


def analyse(config, shape=None, cfg_options=None, deploy=False, backbone_only=False):
    """Params and FLOPs of the whole model and of its backbone at ``shape`` (H, W).

    Returns:
        dict: ``params`` / ``flops`` of the model (``None`` with ``backbone_only``) and the backbone,
        ``contmix_flops`` (part of the backbone's), for detectors with masks the mask heads' share, the RoIs they
        ran on and the total with them on 100 RoIs, the ops the counter skipped, and the settings used.
    """
    model, cfg = build_model(config, cfg_options, deploy, init=not backbone_only)
    task = cfg.default_scope
    height, width = shape or DEFAULT_SHAPES[task]
    image = torch.rand(1, 3, height, width)
    with torch.no_grad():
        backbone = count_flops(model.backbone, (image, ))
        backbone_flops = backbone.total()
        by_op = backbone.by_operator()
        unknown_contmix = [op for op in backbone.unsupported_ops() if 'contmix' in op.lower()]
        if unknown_contmix:
            raise RuntimeError(f'ContMix traced as {unknown_contmix}, which get_flops does not count: add it to '
                               'CONTMIX_OPS')
        model_flops, skipped = None, sorted(backbone.unsupported_ops())
        mask = dict(mask_head_flops=None, mask_rois=None)
        if not backbone_only:
            forward = model.forward
            model.forward = partial(forward, data_samples=_data_samples(task, height, width), mode='tensor')
            rois_seen, hook = _watch_mask_rois(model)
            try:
                whole = count_flops(model, (image, ))
                model_flops = whole.total()
                skipped = sorted(whole.unsupported_ops())
                if rois_seen:
                    mask = dict(mask_head_flops=whole.by_module()['roi_head.mask_head'], mask_rois=rois_seen[-1])
            finally:
                model.forward = forward
                if hook is not None:
                    hook.remove()
    return dict(
        config=config,
        task=task,
        shape=[height, width],
        deploy=deploy,
        params=sum(p.numel() for p in model.parameters()),
        flops=model_flops,
        backbone_params=sum(p.numel() for p in model.backbone.parameters()),
        backbone_flops=backbone_flops,
        contmix_flops=by_op.get('contmix', 0),
        **mask,
        flops_mask_head_on_100_rois=_on_100_mask_rois(model_flops, **mask),
        uncounted_ops=skipped,
        note='FLOPs = multiply-adds (fvcore convention) at batch 1; element-wise ops are not counted')


def _fmt(n, unit):
    """Millions for parameters; GFLOPs, or MFLOPs below 0.1 G so small models do not print as 0.00."""
    if unit == 'FLOPs':
        return f'{n / 1e9:.2f} GFLOPs' if n >= 1e8 else f'{n / 1e6:.2f} MFLOPs'
    return f'{n / 1e6:.2f} M'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Params and FLOPs of an mmoverlock model (ContMix counted)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: 800 1333 for detectors, 512 512 for segmentors)')
    parser.add_argument('--deploy', action='store_true', help='count the re-parameterised (deploy) backbone')
    parser.add_argument('--backbone-only', action='store_true', help='trace the backbone only (faster)')
    parser.add_argument('--out', help='also write the result as JSON')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = analyse(args.config, args.shape, args.cfg_options, args.deploy, args.backbone_only)
    line = '=' * 60
    model_flops = 'not traced' if result['flops'] is None else _fmt(result['flops'], 'FLOPs')
    print(f"{line}\n{args.config}\ninput 1x3x{result['shape'][0]}x{result['shape'][1]}"
          f"{' (deploy backbone)' if args.deploy else ''}\n"
          f"model:    params {_fmt(result['params'], 'params')}, FLOPs {model_flops}\n"
          f"backbone: params {_fmt(result['backbone_params'], 'params')}, "
          f"FLOPs {_fmt(result['backbone_flops'], 'FLOPs')} "
          f"(ContMix core {_fmt(result['contmix_flops'], 'FLOPs')})\n"
          + (f"mask heads: {_fmt(result['mask_head_flops'], 'FLOPs')} on {result['mask_rois']} RoIs (mmdet 3 tensor "
             f"mode); model FLOPs with them on 100 RoIs as published figures count: "
             f"{_fmt(result['flops_mask_head_on_100_rois'], 'FLOPs')}\n" if result['mask_rois'] else '')
          + f"not counted (element-wise or data-dependent): {', '.join(result['uncounted_ops']) or 'none'}\n{line}")
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
