# Demo baseline: plain ResNet-18 (mmpretrain's ResNet_CIFAR) on the embedded digits dataset,
# same schedule as kw1x-resnet18_1xb64_digits.py.
_base_ = './kw1x-resnet18_1xb64_digits.py'
model = dict(backbone=dict(_delete_=True, type='ResNet_CIFAR', depth=18, out_indices=(3, )))
custom_hooks = []
