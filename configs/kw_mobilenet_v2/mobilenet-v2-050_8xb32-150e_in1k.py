# Baseline MobileNetV2 (0.5x), the paper's 150-epoch MobileNetV2 strategy (Table 4).
_base_ = './mobilenet-v2_8xb32-150e_in1k.py'
model = dict(backbone=dict(widen_factor=0.5))  # the last conv keeps 1280 channels
