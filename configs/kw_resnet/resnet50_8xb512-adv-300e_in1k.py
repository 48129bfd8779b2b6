# Baseline ResNet-50, advanced strategy (paper Table 2): the plain ResNet-50 (mmpretrain's
# network and names), with drop path 0.1 in every block as the release trains its baseline and
# KW models (mmpretrain's ResNet would raise it linearly over the blocks).
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    '../_base_/recipes/advanced_8xb512_in1k.py',
]
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='DynamicResNet', depth=50, out_indices=(3, ),
                  drop_path_rate=0.1, drop_path_schedule='uniform'),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
