# KernelDNA ResNet-50 on ImageNet with the release's recipe (README: 300 epochs with 20 linear
# warm-up epochs, lr 0.1, weight decay 1e-4, batch 256). The release's warm-up sets lr x (e+1)/20
# in epoch e; mmengine's LinearLR goes from 1/20 to 1 over the same 20 epochs (at most 5% lower).
_base_ = [
    '../_base_/models/kdna-resnet50_in1k.py',
    '../_base_/recipes/kdna-release_8xb32_in1k.py',
]
param_scheduler = [
    dict(type='LinearLR', start_factor=1 / 20, by_epoch=True, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=20, end=300),
]
train_cfg = dict(max_epochs=300)
