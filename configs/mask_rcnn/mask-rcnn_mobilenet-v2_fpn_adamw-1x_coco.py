# Mask R-CNN + FPN 1x on COCO with the baseline MobileNetV2 (1.0x) backbone (paper Table 3),
# trained with the release's recipe (configs/_base_/recipes/mask-rcnn_1x_coco_release.py;
# release config detection/configs/kernelwarehouse/mobilenetv2/
# mask_rcnn_mobilenetv2_100_adamw_1x_coco.py). The backbone is KWMobileNetV2 with budget=None:
# mmpretrain's MobileNetV2 network and parameter names (mmdet's MobileNetV2 names its block
# convs differently), so it loads the checkpoint of
# configs/kw_mobilenet_v2/mobilenet-v2_8xb32-150e_in1k.py. Outputs of layer2, layer3, layer5 and
# conv2 (strides 4, 8, 16, 32; 24, 32, 96, 1280 channels) as in the release; frozen_stages=2
# freezes the stem, layer1 and layer2 (everything at stride <= 4, the release's frozen part).
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWMobileNetV2',
        widen_factor=1.0,
        budget=None,
        attention_init=None,
        out_indices=(1, 2, 4, 7),
        frozen_stages=2,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/mobilenet-v2_8xb32-150e_in1k.pth')),
    neck=dict(in_channels=[24, 32, 96, 1280]))
