# Baseline ResNet-18 on the KernelDNA recipe (kdna-resnet18_8xb32-90e_in1k.py): the same
# classifier with mmpretrain's plain ResNet-18 (torchvision's layers and names).
_base_ = ['./kdna-resnet18_8xb32-90e_in1k.py']
model = dict(backbone=dict(_delete_=True, type='ResNet', depth=18, out_indices=(3, )))
