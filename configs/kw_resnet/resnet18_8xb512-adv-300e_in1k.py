# Baseline ResNet-18, advanced strategy (paper Table 2): mmpretrain's ResNet, no KW. The
# release states no drop path for this baseline; we use none.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    '../_base_/recipes/advanced_8xb512_in1k.py',
]
model = dict(head=dict(loss={{_base_.label_smooth_loss}}), train_cfg={{_base_.batch_mix}})
