# Mask R-CNN + FPN 1x on COCO with the KernelDNA ResNet-18 backbone (as
# mask-rcnn_kdna-r50_fpn_1x_coco.py), fine-tuned from an mmpretrain checkpoint of
# configs/kdna_resnet/kdna-resnet18_8xb32-90e_in1k.py; the FPN takes ResNet-18's widths.
_base_ = './mask-rcnn_kdna-r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        depth=18,
        init_cfg=dict(checkpoint='checkpoints/kdna-resnet18_8xb32-90e_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
