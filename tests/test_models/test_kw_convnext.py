"""KWConvNeXt: the release's and the paper's parameter counts and Table 14 warehouses,
mmpretrain ConvNeXt interface (outputs with their norms, frozen_stages, registries)."""
import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the modules)
from mmkw.models import KWConvNeXt
from mmkw.ops import KWConv2d, set_temperature

pytestmark = pytest.mark.usefixtures('one_thread')

PAPER_1X = [16, 4, 4, 4] + [147, 24] * 6  # Table 14, KW (1x): n = m
# (budget, layout): params (M) with a 1000-class head, cells n and mixtures mt per warehouse
CASES = [
    # the release's model (its README and checkpoint)
    ('1x', 'release', 39.37, [16, 4, 4, 4, 147, 24, 147, 24, 441, 72, 147, 24],
     [16, 4, 4, 4, 147, 24, 147, 24, 441, 72, 147, 24]),
    # the paper's Table 2 sizes with its Table 14 warehouses
    ('1x', 'paper', 32.99, PAPER_1X, PAPER_1X),
    ('3/4x', 'paper', 24.53, [16, 4, 4, 4] + [147, 24] * 4 + [147, 48] * 2,
     [16, 4, 4, 4] + [147, 24] * 4 + [147, 96] * 2),
]


def num_params(model: KWConvNeXt, num_classes: int = 1000) -> int:
    return sum(p.numel() for p in model.parameters()) + (model.feat_dim + 1) * num_classes


@pytest.mark.parametrize('budget,layout,params,cells,mixtures', CASES)
def test_parameter_counts_and_table14(budget, layout, params, cells, mixtures):
    model = KWConvNeXt('tiny', budget=budget, layout=layout)
    assert abs(num_params(model) / 1e6 - params) < 0.01
    summary = model.warehouse_manager.summary()
    assert [row['n'] for row in summary] == cells
    assert [row['mt'] for row in summary] == mixtures


def test_warehouse_order_and_sharing():
    model = KWConvNeXt('tiny', budget='1x')
    names = [row['name'] for row in model.warehouse_manager.summary()]
    # the stem and the downsampling convs are reserved before the blocks, as in the release
    assert names == ['stem', 'downsample1', 'downsample2', 'downsample3', 'stage0_dw',
                     'stage0_pw', 'stage1_dw', 'stage1_pw', 'stage2_dw', 'stage2_pw',
                     'stage3_dw', 'stage3_pw']
    block = model.stages[2][4]
    assert block.pointwise_conv1.warehouse_name == block.pointwise_conv2.warehouse_name == \
        'stage2_pw'
    attention = block.depthwise_conv.attention
    assert isinstance(attention.norm1, nn.LayerNorm) and attention.fc1.bias is not None
    assert all(m.bias is not None for m in model.modules() if isinstance(m, KWConv2d))
    paper = KWConvNeXt('tiny', budget='3/4x', layout='paper')
    assert paper.warehouse_groups == (1, 1, 3, 1)
    assert [paper.stages[2][j].depthwise_conv.warehouse_name for j in (0, 3, 8)] == \
        ['stage2.0_dw', 'stage2.1_dw', 'stage2.2_dw']
    budgets = {row['name']: row['b'] for row in paper.warehouse_manager.summary()}
    assert budgets['stage2.2_pw'] == budgets['stage3_pw'] == 0.5
    assert budgets['stage2.1_pw'] == budgets['stage3_dw'] == 1
    assert paper.stages[0][0].depthwise_conv.attention.fc1.out_features == 16  # 96 / 32 -> 16


def test_other_archs_share_per_stage():
    model = KWConvNeXt('small', budget='1x')
    assert [row['n'] for row in model.warehouse_manager.summary()][8:10] == [27 * 49, 27 * 8]


def test_plain_network_is_mmpretrains():
    from mmpretrain.models import ConvNeXt
    assert abs(num_params(KWConvNeXt('tiny', budget=None)) / 1e6 - 28.59) < 0.01
    ours = KWConvNeXt('tiny', budget=None, out_indices=(0, 1, 2, 3),
                      gap_before_final_norm=False).eval()
    ref = ConvNeXt('tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    ref.eval()  # its train() returns None
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('gap', [False, True])
def test_outputs_match_mmpretrain_convnext_shapes(gap):
    from mmpretrain.models import ConvNeXt
    x = torch.randn(1, 3, 64, 64)
    for out_indices in ((0, 1, 2, 3), (-1, )):
        ours = KWConvNeXt('tiny', budget='1x', out_indices=out_indices,
                          gap_before_final_norm=gap).eval()
        ref = ConvNeXt('tiny', out_indices=list(out_indices), gap_before_final_norm=gap)
        ref.eval()
        with torch.no_grad():
            assert [o.shape for o in ours(x)] == [o.shape for o in ref(x)]
        assert [n for n, _ in ours.named_children() if n.startswith('norm')] == \
            [n for n, _ in ref.named_children() if n.startswith('norm')]


@pytest.mark.parametrize('budget,layout', [('1x', 'release'), ('1x', 'paper'),
                                           ('3/4x', 'paper')])
def test_forward_backward(budget, layout):
    model = KWConvNeXt('tiny', budget=budget, layout=layout, out_indices=(0, 1, 2, 3),
                       gap_before_final_norm=False, drop_path_rate=0.1)
    model.train()
    set_temperature(model, 0.5)
    outs = model(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 96, 8, 8), (2, 192, 4, 4), (2, 384, 2, 2),
                                              (2, 768, 1, 1)]
    sum(o.mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_gradient_checkpointing_matches():
    model = KWConvNeXt('tiny', budget='1x', with_cp=True, drop_path_rate=0.0)
    model.train()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    grads = []
    for with_cp in (True, False):
        for block in model.modules():
            if hasattr(block, 'with_cp'):
                block.with_cp = with_cp
        x.grad = None
        out = model(x)[0]
        out.sum().backward()
        grads.append((out.detach(), x.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1])


def test_frozen_stages_freeze_their_warehouses():
    model = KWConvNeXt('tiny', budget='1x', frozen_stages=1, out_indices=(0, 1),
                       gap_before_final_norm=False)
    model.train()
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    for module in (model.downsample_layers[0], model.stages[0]):
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert model.stages[1].training
    frozen = [row['name'] for row, w in zip(model.warehouse_manager.summary(),
                                            model.warehouse_manager.weights)
              if not w.requires_grad]
    assert frozen == ['stem', 'stage0_dw', 'stage0_pw']
    assert model.downsample_layers[1][1].attention.fc2.weight.grad is not None


def test_init_keeps_the_release_attention_init():
    # the default init_cfg (TruncNormal std 0.02 on 'Linear', as mmpretrain's ConvNeXt) must not
    # reach the attentions, which the release initialises with kaiming (fan_out)
    model = KWConvNeXt('tiny', budget='1x')
    model.init_weights()
    fc2 = model.stages[3][0].depthwise_conv.attention.fc2.weight
    expected = (2 / fc2.shape[0]) ** 0.5
    assert abs(fc2.std().item() / expected - 1) < 0.1


@pytest.mark.parametrize('scope', ['mmdet', 'mmpretrain'])
def test_builds_from_both_registries(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    backbone = MODELS.build(dict(type='KWConvNeXt', arch='tiny', budget='1x',
                                 out_indices=(0, 1, 2, 3), gap_before_final_norm=False))
    assert isinstance(backbone, KWConvNeXt)


def test_bad_arguments_are_named():
    with pytest.raises(KeyError, match="invalid arch 'femto'"):
        KWConvNeXt('femto')
    with pytest.raises(ValueError, match='warehouse_groups'):
        KWConvNeXt('tiny', warehouse_groups=(1, 1, 2, 1))
    with pytest.raises(ValueError, match='out_indices'):
        KWConvNeXt('tiny', out_indices=(4, ))
    with pytest.raises(ValueError, match='layout'):
        KWConvNeXt('tiny', layout='table14')
