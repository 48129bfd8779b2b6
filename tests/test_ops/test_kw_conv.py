"""Math of the KW layer: partition, warehouse, CAF, beta, temperature, checkpoints."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmkw.ops import (Budget, KWAttention, KWConv2d, WarehouseManager, get_temperature,
                      one_to_one_beta, set_temperature)

FIXTURES = Path(__file__).resolve().parents[3] / 'shared' / 'fixtures' / 'official_kw'


class KWStack(nn.Module):
    """A few KW convs applied in sequence with ReLU, like the official fixtures' network."""

    def __init__(self, layers, budget='1x', nonlocal_basis_ratio=1.0, reduction=1 / 16,
                 attention_init='one_to_one'):
        super().__init__()
        self.warehouse_manager = WarehouseManager(budget, reduction, nonlocal_basis_ratio,
                                                  attention_init=attention_init)
        self.convs = nn.ModuleList([
            KWConv2d(layer['in'], layer['out'], layer['k'], layer.get('stride', 1),
                     layer.get('padding', layer['k'] // 2),
                     groups=layer.get('groups', 1), bias=layer.get('bias', False),
                     warehouse_manager=self.warehouse_manager,
                     warehouse_name=f"w{layer.get('group', 0)}") for layer in layers
        ])
        self.warehouse_manager.build(self)

    def forward(self, x, all_outputs=False):
        outs = []
        for conv in self.convs:
            x = F.relu(conv(x))
            outs.append(x)
        return outs if all_outputs else x


LAYERS = [
    dict(**{'in': 16}, out=32, k=3, group=0),
    dict(**{'in': 32}, out=32, k=3, stride=2, group=0),
    dict(**{'in': 32}, out=64, k=1, group=0),
    dict(**{'in': 64}, out=64, k=3, groups=64, group=1),
    dict(**{'in': 64}, out=128, k=1, group=2),
    dict(**{'in': 128}, out=128, k=3, groups=4, group=2, bias=True),
]


def plain_weight(conv: KWConv2d, mixture_cells):
    """Kernel of a plain conv whose cell i is warehouse cell mixture_cells[i] (None: zero),
    written out index by index from the release's mixture order."""
    cells = conv.warehouse_manager.cells(conv.warehouse_index).detach()
    co, ci = conv.cell_shape[:2]
    spatial, g_out, g_in = conv.mixture_grid
    kh, kw = conv.kernel_size
    weight = torch.zeros(conv.weight_shape)
    for s in range(spatial):
        for o in range(g_out):
            for c in range(g_in):
                j = mixture_cells[(s * g_out + o) * g_in + c]
                if j is not None:
                    weight[o * co:(o + 1) * co, c * ci:(c + 1) * ci, s // kw, s % kw] = \
                        cells[j, :, :, 0, 0]
    return weight


def beta_cells(conv):
    beta = conv.attention.beta
    n = beta.shape[1] - 1
    return [None if int(row.argmax()) == n else int(row.argmax()) for row in beta]


@pytest.mark.parametrize('case', ['b1', 'b1d2', 'b1d2_basis'])
def test_official_fixtures(case):
    if not FIXTURES.is_dir():
        pytest.skip(f'official fixtures not found at {FIXTURES} (../shared is absent)')
    desc = json.loads((FIXTURES / f'{case}.json').read_text())
    data = torch.load(FIXTURES / f'{case}.pt', weights_only=True)
    manager = desc['manager']
    budget = {k: manager[k] for k in ('cell_num_ratio', 'cell_inplane_ratio',
                                      'cell_outplane_ratio')}
    net = KWStack(desc['layers'], budget, manager.get('nonlocal_basis_ratio', 1.0),
                  manager['reduction']).eval()
    assert [list(w.shape) for w in net.warehouse_manager.weights] == desc['warehouse_shapes']
    # the official key names are ours: loading needs no renaming beyond 'convs.{i}'
    net.load_state_dict(data['state_dict'], strict=True)
    for tau, expected in data['outputs'].items():
        set_temperature(net, float(tau))
        with torch.no_grad():
            outputs = net(data['input'], all_outputs=True)
        for layer, (out, ref) in enumerate(zip(outputs, expected)):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0,
                                       msg=f'{case} tau={tau} layer {layer}')


def test_warehouse_sizes_follow_gcd_and_budget():
    net = KWStack(LAYERS)
    shapes = [tuple(w.shape) for w in net.warehouse_manager.weights]
    # w0: gcd(out)=32, gcd(in)=16 -> m = 9 + 18 + 4 = 31; depthwise: 9; w2: 64x64 cells
    # w2: out gcd 128, in gcd gcd(64, 128 / 4 groups) = 32 -> m = 2 + 9
    assert shapes == [(31, 32, 16, 1, 1), (9, 64, 1, 1, 1), (11, 128, 32, 1, 1)]
    half = KWStack(LAYERS, '1/2x')
    n_half = [w.shape[0] for w in half.warehouse_manager.weights]
    assert n_half[0] == (36 + 72 + 16) // 2
    four = KWStack(LAYERS, '4x')
    assert [w.shape[0] for w in four.warehouse_manager.weights] == [4 * s[0] for s in shapes]


def test_tau_one_equals_plain_conv_from_beta_cells():
    torch.manual_seed(0)
    net = KWStack(LAYERS).train()
    set_temperature(net, 1.0)
    x = torch.randn(3, 16, 10, 10)
    for conv in net.convs:
        expected = F.conv2d(x, plain_weight(conv, beta_cells(conv)), conv.bias, conv.stride,
                            conv.padding, conv.dilation, conv.groups)
        out = conv(x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        x = F.relu(out)


def test_half_budget_zero_cell_pattern():
    torch.manual_seed(0)
    net = KWStack(LAYERS, '1/2x').eval()
    set_temperature(net, 1.0)
    conv = net.convs[0]
    cells = beta_cells(conv)
    # A.2 / Figure 6a: with r = 2 the mixtures i with i % 2 == (i // 2) % 2 own a cell, the
    # others get the zero cell and contribute nothing
    assert cells[:8] == [0, None, None, 1, 2, None, None, 3]
    assert sum(c is not None for c in cells) == conv.attention.num_mixtures // 2
    x = torch.randn(2, 16, 8, 8)
    expected = F.conv2d(x, plain_weight(conv, cells), None, conv.stride, conv.padding)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)
    # ...and cells of the zero-cell mixtures are exactly zero in the assembled kernel
    assembled = conv.assemble(conv.attention(x))[0]
    assert torch.count_nonzero(assembled) == torch.count_nonzero(plain_weight(conv, cells))


def test_beta_owns_every_cell_once():
    # (1/4x cannot be owned one to one by a depthwise conv of m=18: KWResNet tests cover it)
    for budget in ('1/2x', '1x', '2x', '4x'):
        net = KWStack(LAYERS, budget)
        for index, cells in enumerate(net.warehouse_manager.weights):
            owned = []
            for conv in net.convs:
                if conv.warehouse_index == index:
                    owned += [c for c in beta_cells(conv) if c is not None]
            step = max(int(Budget.parse(budget).b), 1)
            assert owned == list(range(0, cells.shape[0], step)), budget


def test_one_to_one_beta_rows():
    beta, end = one_to_one_beta(4, 8, 0, 2)
    assert end == 8 and beta[:, :-1].argmax(1).tolist() == [0, 2, 4, 6]
    beta, end = one_to_one_beta(8, 2, 0, 0.25)
    assert end == 2 and beta.sum(1).tolist() == [1] * 8
    assert beta[:, -1].tolist() == [0, 1, 1, 1, 1, 0, 1, 1]


def test_caf_normalises_and_temperature_mixes_beta():
    net = KWStack(LAYERS[:1]).train()
    att = net.convs[0].attention
    x = torch.randn(4, 16, 6, 6)
    set_temperature(net, 0.0)
    logits = att.logits(x)
    alpha0 = att(x)
    caf = logits / (logits.abs().sum(2, keepdim=True) + 1e-3)
    torch.testing.assert_close(alpha0, caf[..., :-1])
    assert (alpha0 < 0).any(), 'CAF keeps negative attentions'
    set_temperature(net, 0.4)
    torch.testing.assert_close(att(x), 0.6 * alpha0 + 0.4 * att.beta[:, :-1])
    with pytest.raises(ValueError, match='temperature'):
        set_temperature(net, 1.5)


def test_gradients_reach_every_cell_and_attention_parameter():
    torch.manual_seed(0)
    for budget, basis in (('1x', 1.0), ('1/2x', 1 / 16), ('4x', 1.0)):
        net = KWStack(LAYERS, budget, basis).train()
        net(torch.randn(2, 16, 8, 8)).square().mean().backward()
        for name, param in net.named_parameters():
            assert param.grad is not None, f'{budget}: no gradient for {name}'
            if param.numel():
                assert param.grad.abs().sum() > 0, f'{budget}: zero gradient for {name}'
        for cells in net.warehouse_manager.weights:
            per_cell = cells.grad.flatten(1).abs().sum(1)
            assert (per_cell > 0).all(), f'{budget}: a warehouse cell got no gradient'


def test_state_dict_round_trip_without_tau_and_beta():
    torch.manual_seed(0)
    a = KWStack(LAYERS, '1/2x', 1 / 16).eval()
    set_temperature(a, 0.7)
    state = a.state_dict()
    assert not any('beta' in k or 'temperature' in k for k in state)
    torch.manual_seed(1)
    b = KWStack(LAYERS, '1/2x', 1 / 16).eval()
    assert get_temperature(b) == 0.0, 'tau is 0 outside a run that sets it'
    b.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 8, 8)
    set_temperature(a, 0.0)
    torch.testing.assert_close(a(x), b(x))


def test_loading_another_budget_fails_naming_the_warehouse():
    state = KWStack(LAYERS, '1x').state_dict()
    with pytest.raises(ValueError, match=r"warehouse_manager.weights.0.*'w0'.*another budget"):
        KWStack(LAYERS, '2x').load_state_dict(state)


def test_attention_mismatch_fails_naming_the_layer():
    state = KWStack(LAYERS, '1x').state_dict()
    # same warehouse sizes are impossible to fake across budgets; change one attention instead
    state['convs.1.attention.fc2.weight'] = state['convs.1.attention.fc2.weight'][:-1]
    with pytest.raises(ValueError, match=r"KW attention 'convs.1.attention'"):
        KWStack(LAYERS, '1x').load_state_dict(state)


def test_clear_errors_on_bad_input():
    with pytest.raises(ValueError, match='budget'):
        Budget.parse('two')
    with pytest.raises(ValueError, match='positive'):
        Budget.parse(-1)
    with pytest.raises(ValueError, match=r"warehouse 'w0'.*b=1.5.*whole number"):
        KWStack(LAYERS[:2], 1.5)
    with pytest.raises(ValueError, match=r"warehouse 'w0'.*no valid cell shape"):
        KWStack([dict(**{'in': 6}, out=6, k=3)],
                dict(cell_num_ratio=1, cell_inplane_ratio=0.75, cell_outplane_ratio=1))
    manager = WarehouseManager()
    orphan = KWConv2d(8, 8, 3, warehouse_manager=manager, warehouse_name='stage0')
    with pytest.raises(RuntimeError, match="warehouse 'stage0'.*not bound"):
        orphan(torch.randn(1, 8, 4, 4))
    with pytest.raises(RuntimeError, match=r"1 convs reserved it but 0 were found"):
        manager.build(nn.Sequential())
    net = KWStack(LAYERS[:1])
    with pytest.raises(ValueError, match=r'expects input \[B, 16, H, W\]'):
        net.convs[0](torch.randn(1, 8, 4, 4))


def test_disabled_init_strategy_keeps_tau_zero():
    net = KWStack(LAYERS, attention_init=None)
    assert set_temperature(net, 1.0) == 0
    assert get_temperature(net) == 0.0


def test_deepcopy_keeps_convs_on_the_copied_warehouse():
    net = KWStack(LAYERS)
    clone = copy.deepcopy(net)
    assert clone.convs[0].warehouse_manager is clone.warehouse_manager
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(net.eval()(x), clone.eval()(x))


def test_build_conv_layer_builds_kw_conv():
    from mmcv.cnn import build_conv_layer
    manager = WarehouseManager()
    conv = build_conv_layer(dict(type='KWConv2d', warehouse_manager=manager,
                                 warehouse_name='stage0'), 8, 16, 3, padding=1)
    assert isinstance(conv, KWConv2d) and conv.weight_shape == (16, 8, 3, 3)
    assert isinstance(KWAttention, type)
