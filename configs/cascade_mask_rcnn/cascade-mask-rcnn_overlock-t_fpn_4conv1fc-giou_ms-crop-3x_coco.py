# Cascade Mask R-CNN + FPN with OverLoCK-T, 3x, in the recipe family of the paper's Cascade Mask R-CNN table (the
# Swin / ConvNeXt / MogaNet / UniRepLKNet rows). The authors released no Cascade config or checkpoint.
#
# Mirrors mmdet 3.3's configs/convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py
# with OverLoCK-T for ConvNeXt-T. Same as there: three Shared4Conv1FCBBoxHead stages (4 convs + 1 fc, SyncBN,
# class-specific regression), GIoU loss (weight 10) on decoded boxes, the DETR-style multi-scale + crop augmentation,
# 36 epochs with steps at 27 and 33, AdamW with weight decay 0.05 at a total batch of 16 (8 GPUs x 2 images).
# Where it deviates, and why:
# - no layer-wise learning-rate decay: ConvNeXt's LearningRateDecayOptimizerConstructor assigns layer ids from
#   ConvNeXt's module names and knows nothing of OverLoCK's; one AdamW rate for all parameters instead, lr 1e-4, the
#   authors' 3x rate for OverLoCK at this batch (ConvNeXt's 2e-4 comes with a 0.7 decay per layer group that puts most
#   of its backbone far below 2e-4);
# - fp32 instead of AMP: the authors train OverLoCK detectors in fp32 (AMP "may meet nan loss" in their configs);
# - the authors' detection warm-up (500 iterations, not 1000), drop path (0.2 / 0.4 / 0.6 for T / S / B) and
#   no-weight-decay rule (../_base_/overlock_paramwise.py), and SyncBN in the backbone too;
# - one checkpoint kept plus the best, as in the authors' Mask R-CNN configs.
# Everything but the box heads is ./cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py (the authors' Mask R-CNN 3x
# recipe on mmdet's standard cascade heads), which this config inherits.
_base_ = ['./cascade-mask-rcnn_overlock-t_fpn_ms-3x_coco.py']

# One box head per cascade stage (IoU 0.5 / 0.6 / 0.7), with the base config's tightening target stds.
bbox_head_4conv1fc_giou = dict(
    type='Shared4Conv1FCBBoxHead',
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=80,
    reg_class_agnostic=False,
    reg_decoded_bbox=True,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
cascade_target_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
model = dict(
    roi_head=dict(bbox_head=[
        dict(
            bbox_head_4conv1fc_giou,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds))
        for stds in cascade_target_stds
    ]))
