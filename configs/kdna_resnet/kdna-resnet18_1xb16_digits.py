# Demo: KernelDNA ResNet-18, small-input variant (3x3 stem, no max-pool; KDNAResNet_CIFAR), on
# the embedded digits dataset with the data, optimizer and schedule of the KW demo
# (configs/kw_resnet/kw1x-resnet18_1xb16_digits.py), so the demo table compares the methods on
# the same data. KernelDNA has no temperature: no hook.
_base_ = ['../kw_resnet/kw1x-resnet18_1xb16_digits.py']
model = dict(
    backbone=dict(_delete_=True, type='KDNAResNet_CIFAR', depth=18, out_indices=(3, )))
custom_hooks = []
