# Baseline MobileNetV2 (1.0x) on the KernelDNA recipe: mmpretrain's plain MobileNetV2 with the
# same classifier (no dropout, as the release's baseline).
_base_ = ['./kdna-mobilenet-v2_8xb32-150e_in1k.py']
model = dict(backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=1.0,
                           out_indices=(7, )))
