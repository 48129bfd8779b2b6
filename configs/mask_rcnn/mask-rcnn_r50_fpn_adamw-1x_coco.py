# Mask R-CNN + FPN, 1x on COCO 2017 with the paper's fine-tuning recipe (A.1.2, Table 3):
# batch 16 (8 GPUs x 2), multi-scale training (short side 640-800, long side <= 1333), AdamW
# lr 1e-4 with weight decay 0.05 (none on norms), lr x0.1 after epochs 8 and 11 of 12,
# frozen_stages=1 and norm_eval=True. This file is the ResNet-50 baseline; the KW configs
# only swap the backbone.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
model = dict(
    backbone=dict(frozen_stages=1, norm_eval=True,
                  init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=[(1333, 640), (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
