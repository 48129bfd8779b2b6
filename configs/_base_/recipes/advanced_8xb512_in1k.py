# The paper's advanced ImageNet strategy (A.1.1, the release's defaults): AdamW, batch 4096,
# lr 4e-3, weight decay 0.05 (none on norms, biases and other 1-D parameters), 300 epochs of
# cosine decay after 20 linear warm-up epochs, RandAugment rand-m9-mstd0.5-inc1, random
# erasing 0.25, mixup 0.8, cutmix 1.0, label smoothing 0.1; tau over the first 20 epochs.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/default_runtime.py',
]
# Model parts of the recipe; a leaf config merges them into its model (two bases cannot both
# define `model`): head=dict(loss={{_base_.label_smooth_loss}}), train_cfg={{_base_.batch_mix}}
label_smooth_loss = dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
batch_mix = dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)])
train_dataloader = dict(batch_size=512)
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=4096)
# Warm-up length of KW's tau under this recipe; a KW leaf config adds the hook:
# custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
kw_tau_epochs = 20
