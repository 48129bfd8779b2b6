# Demo: Mask R-CNN with a KW (1x) ResNet-18 backbone initialised from the digits pretraining
# checkpoint (configs/kw_resnet/kw1x-resnet18_1xb16_digits.py), fine-tuned on the embedded
# shapes dataset (tools/dataset_converters/make_shapes_coco.py, COCO format) on CPU and
# evaluated with COCO bbox and segm AP. The backbone keeps the paper's fine-tuning settings
# (init strategy off, frozen_stages=1, norm_eval); the detector is slimmed for a 2-core CPU
# (64-channel FPN and heads, fewer proposals and RoIs) while the COCO configs keep the paper's.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
pretrained = 'work_dirs/kw1x-resnet18_1xb16_digits/epoch_6.pth'
width = 64
model = dict(
    # the digits pretraining normalised pixels with mean = std = 127.5
    data_preprocessor=dict(mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='KWResNet',
        depth=18,
        budget='1x',
        stem_kernel_size=3,  # the small-input stem of the pretraining, at stride 2 + max-pool
        attention_init=None,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    # RoIAlign with torchvision's forward pass (mmcv's CPU kernels took 55% of a training step
    # on a 2-core Xeon) and mmkw's vectorised backward pass (torchvision's then took a quarter of
    # a plain ResNet-18 step): the same sampling and results, see mmkw/ops/roi_align.py
    roi_head=dict(
        bbox_roi_extractor=dict(type='CPUSingleRoIExtractor', out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(type='CPUSingleRoIExtractor', out_channels=width),
        mask_head=dict(num_convs=2, in_channels=width, conv_out_channels=width,
                       num_classes=3)),
    # At most 4 shapes an image: 150 proposals and 64 sampled RoIs (a quarter positive) still
    # cover them. Against 300 and 128, the KW detector's step ran 1.08x faster (interleaved A/B,
    # AVX2-only EPYC) and both detectors' runs took 228 and 171 s instead of 243 and 224 s,
    # at 0.134 / 0.138 (KW) and 0.163 / 0.161 box / mask AP against 0.108 / 0.110 and
    # 0.169 / 0.165.
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=300, max_per_img=150),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))

dataset_type = 'CocoDataset'
data_root = 'data/shapes_coco/'
metainfo = dict(classes=('circle', 'triangle', 'square'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'], format_only=False)
test_evaluator = val_evaluator

# The 1x schedule's shape, shortened to fit the main job's 12 minutes on 2 cores: warm-up,
# lr x0.1 for the last epoch. AdamW at twice the lr of the 10-epoch schedule this replaces, which
# it matched (KW: 0.169 / 0.162 box / mask AP in 6 epochs against 0.146 / 0.137 in 10).
max_epochs = 4
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    # fused: one pass per tensor, as for the digits pretraining
    optimizer=dict(type='AdamW', lr=8e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True),
    paramwise_cfg=dict(norm_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[3],
         gamma=0.1),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    # only the last epoch (see the digits configs); interval=1 keeps every epoch
    checkpoint=dict(type='CheckpointHook', interval=max_epochs))
randomness = dict(seed=0)
