# Baseline MobileNetV2 (1.0x), the paper's 150-epoch MobileNetV2 strategy (Table 4):
# mmpretrain's MobileNetV2, no KW. Its checkpoint also initialises the baseline Mask R-CNN
# (configs/mask_rcnn/mask-rcnn_mobilenet-v2_fpn_adamw-1x_coco.py, KWMobileNetV2 with budget=None
# has the same parameter names).
_base_ = [
    'mmpretrain::_base_/models/mobilenet_v2_1x.py',
    '../_base_/recipes/mobilenet_8xb32-150e_in1k.py',
]
