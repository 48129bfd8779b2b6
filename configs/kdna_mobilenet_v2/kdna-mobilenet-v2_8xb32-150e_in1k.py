# KernelDNA MobileNetV2 (1.0x) on ImageNet with the release's recipe (README: 150 epochs, no
# warm-up, lr 0.05, weight decay 4e-5 on every parameter, batch 256).
_base_ = [
    '../_base_/models/kdna-mobilenet-v2_in1k.py',
    '../_base_/recipes/kdna-release_8xb32_in1k.py',
]
optim_wrapper = dict(optimizer=dict(lr=0.05, weight_decay=4e-5))
param_scheduler = dict(end=150)
train_cfg = dict(max_epochs=150)
