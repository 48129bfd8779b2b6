# KernelDNA MobileNetV2 (0.5x) on ImageNet with the release's recipe (as the 1.0x model).
_base_ = ['./kdna-mobilenet-v2_8xb32-150e_in1k.py']
model = dict(backbone=dict(widen_factor=0.5))
