# Baseline MobileNetV2 (0.5x) on the KernelDNA recipe: mmpretrain's plain MobileNetV2.
_base_ = ['./kdna-mobilenet-v2_8xb32-150e_in1k.py']
model = dict(backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=0.5,
                           out_indices=(7, )))
