# Baseline ConvNeXt-Tiny, advanced strategy (paper Table 2): mmpretrain's ConvNeXt (label
# smoothing, mixup and cutmix come with its model config), drop path 0.1, and a model EMA as in
# ConvNeXt and the release. Its checkpoint also initialises the baseline Mask R-CNN
# (configs/mask_rcnn/mask-rcnn_convnext-t_fpn_adamw-1x_coco.py: KWConvNeXt with budget=None has
# the same parameter names).
_base_ = [
    'mmpretrain::_base_/models/convnext/convnext-tiny.py',
    '../_base_/recipes/advanced_8xb512_in1k.py',
]
model = dict(backbone=dict(drop_path_rate=0.1))
# no KW layer, no temperature; EMA decay 0.9999 per iteration (mmpretrain's ConvNeXt configs)
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
