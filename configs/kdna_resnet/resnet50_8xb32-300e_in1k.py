# Baseline ResNet-50 on the KernelDNA recipe (kdna-resnet50_8xb32-300e_in1k.py): mmpretrain's
# plain ResNet-50.
_base_ = ['./kdna-resnet50_8xb32-300e_in1k.py']
model = dict(backbone=dict(_delete_=True, type='ResNet', depth=50, out_indices=(3, )))
