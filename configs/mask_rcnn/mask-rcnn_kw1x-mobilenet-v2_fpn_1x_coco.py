# Mask R-CNN + FPN 1x on COCO with a KW (1x) MobileNetV2 (1.0x) backbone (paper Table 3),
# fine-tuned from an mmpretrain checkpoint of
# configs/kw_mobilenet_v2/kw1x-mobilenet-v2_8xb32-150e_in1k.py (or a converted official one)
# with the release's recipe (configs/_base_/recipes/mask-rcnn_1x_coco_release.py; release config
# detection/configs/kernelwarehouse/mobilenetv2/mask_rcnn_kw1x_mobilenetv2_100_adamw_1x_coco.py).
# The attention init strategy is disabled for fine-tuning (A.1.2): attention_init=None holds tau
# at 0 and no KWTemperatureHook runs. Outputs and frozen part as for the baseline
# (mask-rcnn_mobilenet-v2_fpn_adamw-1x_coco.py); the warehouses the frozen layers draw from stay
# trainable as in the release (freeze_warehouses=False; see docs/detection_recipes.md).
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWMobileNetV2',
        widen_factor=1.0,
        budget='1x',
        attention_init=None,
        out_indices=(1, 2, 4, 7),
        frozen_stages=2,
        freeze_warehouses=False,  # the release keeps the frozen stages' warehouses trainable
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/kw1x-mobilenet-v2_8xb32-150e_in1k.pth')),
    neck=dict(in_channels=[24, 32, 96, 1280]))
