# The official release's Mask R-CNN + FPN 1x fine-tuning recipe on COCO 2017 (paper Table 3),
# written with mmdet 3.x's own transforms and optimizer constructor. It is the recipe of the
# release's ResNet-50 and MobileNetV2 configs (OSVAI/KernelWarehouse,
# detection/configs/kernelwarehouse/{resnet50,mobilenetv2}/mask_rcnn_*_adamw_1x_coco.py, mmdet
# 2.x); mask-rcnn_convnext_1x_coco_release.py adds the ConvNeXt changes. The rows of Table 3
# inherit it and set only their backbone. docs/detection_recipes.md compares it item by item.
#
# - batch 16 (8 GPUs x 2), 12 epochs, linear warm-up over 500 iterations from lr x0.001, lr x0.1
#   after epochs 8 and 11; model, heads and test pipeline of mmdet's Mask R-CNN R-50 FPN base.
# - AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.05 except for parameters whose name
#   contains 'norm'. The release matches names, not layer types: this exempts the KW
#   attentions' norm1 but not the backbones' BatchNorm layers (bn1, downsample.1, features.*.1
#   in the release; mmdet's and mmpretrain's bn names here), nor biases or warehouse cells. Its
#   other two keys (absolute_pos_embed, relative_position_bias_table) are Swin's and match no
#   parameter of these models.
# - DDP without find_unused_parameters: the release needed it for the ImageNet classifier its
#   detection backbones keep (fc / classifier, never called); mmkw's backbones have none, and
#   every trainable parameter, the attentions over frozen warehouses included, gets a gradient
#   (tests/test_engine/test_detection_recipes.py, also under 2-process DDP).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)

# DETR / Sparse R-CNN augmentation, as the release: flip, then one of two policies at random:
# (a) short side one of 480, 512, ..., 800, long side <= 1333; (b) short side one of 400, 500,
# 600, a random crop of 384-600 pixels in height and width (a crop without any object is kept),
# then (a)'s resize. mmdet 3.x's Resize always recomputes the scale, which the release's second
# Resize needed override=True for.
detr_scales = [(1333, 480), (1333, 512), (1333, 544), (1333, 576), (1333, 608), (1333, 640),
               (1333, 672), (1333, 704), (1333, 736), (1333, 768), (1333, 800)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=detr_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(1333, 400), (1333, 500), (1333, 600)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=detr_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
