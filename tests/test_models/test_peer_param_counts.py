"""Exact parameter counts of the KW paper's peer rows (DY-Conv and ODConv on ResNet and
MobileNetV2, with a 1000-class LinearClsHead), as ``../shared/notes/peers_format.md`` §1 gives
them: measured on the official ODConv code and on the DY-Conv reconstruction. A count that
differs means another layer choice, reduction, minimum width or head than the paper's models.
"""
import pytest
import torch.nn as nn

from mmkw.models import DynamicMobileNetV2, DynamicResNet

# (architecture, method, K, reduction (None: the layer default), parameters with the head)
ROWS = [
    ('resnet18', 'DyConv', 4, None, 45_472_052),
    ('resnet18', 'ODConv', 4, None, 44_901_640),
    ('resnet18', 'ODConv', 1, None, 11_943_944),
    ('resnet50', 'DyConv', 4, None, 100_878_072),
    ('resnet50', 'ODConv', 4, None, 90_670_888),
    ('resnet50', 'ODConv', 1, None, 28_635_112),
    ('mobilenetv2_100', 'DyConv', 4, None, 12_404_540),
    ('mobilenetv2_100', 'ODConv', 4, None, 11_512_149),
    ('mobilenetv2_050', 'DyConv', 4, None, 4_567_338),
    ('mobilenetv2_050', 'ODConv', 4, None, 4_435_501),
    # more counts of the official ODConv code (the notes' second list)
    ('resnet18', 'ODConv', 1, 1 / 4, 12_578_664),
    ('mobilenetv2_100', 'ODConv', 1, None, 4_940_185),
    ('mobilenetv2_050', 'ODConv', 1, None, 2_425_537),
    # KW* (Table 17), the notes' reconstruction: KW 4x with ODConv-style heads
    ('mobilenetv2_100', 'KWStar', '4x', None, 12_507_761),
]
IDS = [f'{arch}-{method}-' + (f'{k}x' if isinstance(k, int) else k)
       + ('' if r is None else f'-r{r:g}') for arch, method, k, r, _ in ROWS]


def no_init(tensor, *args, **kwargs):
    return tensor


@pytest.fixture
def skip_weight_init(monkeypatch):
    """Counting needs shapes only: skip the random init of the 100M-parameter models."""
    for name in ('kaiming_normal_', 'kaiming_uniform_', 'normal_', 'uniform_', 'trunc_normal_',
                 'xavier_uniform_', 'xavier_normal_'):
        monkeypatch.setattr(nn.init, name, no_init)


def build_backbone(arch: str, method: str, kernel_num: int, reduction) -> nn.Module:
    conv_cfg = dict(type=method, budget=kernel_num) if method == 'KWStar' else \
        dict(type=method, kernel_num=kernel_num)
    if reduction is not None:
        conv_cfg['reduction'] = reduction
    if arch.startswith('resnet'):
        return DynamicResNet(depth=int(arch[len('resnet'):]), conv_cfg=conv_cfg)
    return DynamicMobileNetV2(widen_factor=int(arch[-3:]) / 100, conv_cfg=conv_cfg)


@pytest.mark.parametrize('arch, method, kernel_num, reduction, expected', ROWS, ids=IDS)
def test_parameter_count_with_a_1000_class_head(arch, method, kernel_num, reduction, expected,
                                                skip_weight_init):
    from mmpretrain.models.heads import LinearClsHead
    backbone = build_backbone(arch, method, kernel_num, reduction)
    head = LinearClsHead(1000, backbone.feat_dim)
    count = sum(p.numel() for m in (backbone, head) for p in m.parameters())
    assert count == expected, f'{count:,} parameters, the notes count {expected:,}'
