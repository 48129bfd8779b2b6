# The official KernelDNA ImageNet recipe (haiduo/KernelDNA main.py and its README; notes
# kerneldna_format.md §5): SGD with momentum 0.9 (no Nesterov), weight decay on every parameter,
# plain cross-entropy, batch 256, torchvision's RandomResizedCrop(224) + flip for training and
# Resize(256) + CenterCrop(224) for testing (bilinear, pillow), cosine decay per epoch to 0.
# The leaves set lr, weight decay, epochs and warm-up: ResNet-18 90 epochs lr 0.1 wd 1e-4;
# ResNet-50 300 epochs (20 warm-up) lr 0.1 wd 1e-4; MobileNetV2 and ConvNeXt-Tiny 150 epochs
# lr 0.05 wd 4e-5. Not copied: main.py's stray `break` (one mini-batch per epoch).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32_pil_resize.py',
    'mmpretrain::_base_/default_runtime.py',
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))
param_scheduler = dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0, end=90)
train_cfg = dict(by_epoch=True, max_epochs=90, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=256)
