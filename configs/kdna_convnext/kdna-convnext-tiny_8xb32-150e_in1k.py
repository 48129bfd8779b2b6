# mmkw's KernelDNA ConvNeXt-Tiny on ImageNet with the recipe the release's README gives for it
# (150 epochs, no warm-up, SGD lr 0.05, weight decay 4e-5, batch 256; the release has no
# ConvNeXt code to say more). drop path 0.1 as ConvNeXt-Tiny.
_base_ = [
    '../_base_/models/kdna-convnext-tiny_in1k.py',
    '../_base_/recipes/kdna-release_8xb32_in1k.py',
]
optim_wrapper = dict(optimizer=dict(lr=0.05, weight_decay=4e-5))
param_scheduler = dict(end=150)
train_cfg = dict(max_epochs=150)
