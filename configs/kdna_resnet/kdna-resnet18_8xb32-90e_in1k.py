# KernelDNA ResNet-18 on ImageNet with the release's recipe (README: 90 epochs, no warm-up,
# lr 0.1, weight decay 1e-4, batch 256).
_base_ = [
    '../_base_/models/kdna-resnet18_in1k.py',
    '../_base_/recipes/kdna-release_8xb32_in1k.py',
]
