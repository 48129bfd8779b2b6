# The paper's traditional ImageNet strategy (A.1.1): SGD, batch 256, lr 0.1 divided by 10
# every 30 epochs, 100 epochs, weight decay 1e-4, flip + random-resized-crop; tau falls from 1
# to 0 over the first 10 epochs.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/schedules/imagenet_bs256.py',
    'mmpretrain::_base_/default_runtime.py',
]
# Warm-up length of KW's tau under this recipe; a KW leaf config adds the hook:
# custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
kw_tau_epochs = 10
