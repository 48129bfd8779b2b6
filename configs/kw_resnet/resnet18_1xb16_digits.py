# Demo baseline: the same small-input ResNet-18 with normal convs (budget=None), on the
# embedded digits dataset with the schedule of kw1x-resnet18_1xb16_digits.py.
_base_ = './kw1x-resnet18_1xb16_digits.py'
model = dict(backbone=dict(budget=None))
custom_hooks = []
