"""KWLinear: the release's KW linear layer (a KW 1-D conv of kernel 1 over the tokens) on
``[B, N, C]`` tokens, checked against the 1x1 KW conv formulation on the same state dict."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS

from mmkw.ops import KWConv2d, KWLinear, WarehouseManager, get_temperature, set_temperature
from mmkw.ops import per_sample_conv
from mmkw.ops.per_sample_conv import release_formulation

# (in, out) of the layers sharing one warehouse: gcd cells 8 x 8, several mixtures per layer
LAYERS = ((16, 24), (24, 16), (16, 16))
BUDGETS = ['1x', '4x', '1/2x', '1/4x']


class TokenStack(nn.Module):
    """KWLinear layers (GELU between them) sharing one warehouse, as in a ViT block."""

    def __init__(self, layers=LAYERS, budget='1x', bias=True, **manager_kwargs) -> None:
        super().__init__()
        self.warehouse_manager = WarehouseManager(budget, **manager_kwargs)
        self.layers = nn.ModuleList(
            KWLinear(c_in, c_out, bias=bias, warehouse_manager=self.warehouse_manager,
                     warehouse_name='blocks') for c_in, c_out in layers)
        self.warehouse_manager.build(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(nn.functional.gelu(x))
        return x


class ConvStack(nn.Module):
    """The same network as 1x1 KW convs over the tokens laid out as an ``N x 1`` map (the
    release's KWLinear: a KW conv of kernel 1 over the token sequence)."""

    def __init__(self, layers=LAYERS, budget='1x', bias=True, **manager_kwargs) -> None:
        super().__init__()
        self.warehouse_manager = WarehouseManager(budget, **manager_kwargs)
        self.layers = nn.ModuleList(
            KWConv2d(c_in, c_out, 1, bias=bias, warehouse_manager=self.warehouse_manager,
                     warehouse_name='blocks') for c_in, c_out in layers)
        self.warehouse_manager.build(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(1, 2).unsqueeze(-1)
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(nn.functional.gelu(x))
        return x.squeeze(-1).transpose(1, 2)


def twin_networks(**kwargs):
    torch.manual_seed(0)
    linear = TokenStack(**kwargs)
    conv = ConvStack(**kwargs)
    # a few steps' worth of non-trivial values everywhere (biases and BN affine start at 0/1)
    with torch.no_grad():
        for param in linear.parameters():
            param.add_(0.1 * torch.randn_like(param))
    assert set(linear.state_dict()) == set(conv.state_dict())
    conv.load_state_dict(linear.state_dict())
    return linear, conv


def forward_backward(net, tokens):
    tokens = tokens.clone().requires_grad_()
    net.zero_grad()
    out = net(tokens)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    return out.detach(), tokens.grad, grads


@pytest.mark.parametrize('tau', [1.0, 0.3, 0.0])
@pytest.mark.parametrize('budget', BUDGETS)
def test_equals_the_1x1_kw_conv_formulation(budget, tau):
    linear, conv = twin_networks(budget=budget)
    for net in (linear, conv):
        assert set_temperature(net, tau) == len(LAYERS)
    tokens = torch.randn(3, 7, 16)
    for mode in ('train', 'eval'):  # batch statistics, then the running ones
        for net in (linear, conv):
            net.train(mode == 'train')
        out, grad_in, grads = forward_backward(linear, tokens)
        ref_out, ref_grad_in, ref_grads = forward_backward(conv, tokens)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_in, ref_grad_in, atol=1e-5, rtol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f'{name}: {m}')
    # the BatchNorm statistics moved alike
    torch.testing.assert_close(linear.state_dict(), conv.state_dict())


@pytest.mark.parametrize('budget', ['1x', '1/2x'])
def test_nonlocal_basis_equals_the_conv_formulation(budget):
    linear, conv = twin_networks(budget=budget, nonlocal_basis_ratio=1 / 16)
    assert all(layer.attention.use_basis for layer in linear.layers)
    assert 'layers.0.attention.fc3.weight' in linear.state_dict()
    set_temperature(linear, 0.3)
    set_temperature(conv, 0.3)
    tokens = torch.randn(2, 5, 16)
    for got, expected in zip(forward_backward(linear, tokens), forward_backward(conv, tokens)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_half_budget_uses_the_zero_cell():
    linear = TokenStack(budget='1/2x')
    layer = linear.layers[0]
    # half-size cells (4 x 4): m = 6 * 4 mixtures, half of them assigned to the zero cell
    assert layer.cell_shape == (4, 4, 1, 1) and layer.attention.num_mixtures == 24
    zero_cell_rows = layer.attention.beta[:, -1] == 1
    assert zero_cell_rows.sum() == 12
    # at tau = 1 those mixtures are the zero cell: their weight blocks vanish, the others not
    set_temperature(linear, 1.0)
    linear.eval()
    weights = layer.effective_weights(layer.attend(torch.randn(2, 3, 16))[0])
    blocks = weights.view(2, 6, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(2, 24, 16)
    assert (blocks[:, zero_cell_rows] == 0).all()
    assert (blocks[:, ~zero_cell_rows].abs().sum(dim=-1) > 0).all()


def test_tau_one_is_the_linear_layer_of_its_own_cells():
    # the one-to-one init: at tau = 1 every mixture is its own cell, so the layer is a plain
    # linear layer whose weight is its cells laid out by the partition (Eq. 2)
    linear = TokenStack(budget='1x').eval()
    set_temperature(linear, 1.0)
    layer = linear.layers[1]  # 24 -> 16: 2 x 3 cells of 8 x 8, owning cells 6..11
    cells = linear.warehouse_manager.weights[0][6:12, :, :, 0, 0].view(2, 3, 8, 8)
    weight = cells.permute(0, 2, 1, 3).reshape(16, 24)
    tokens = torch.randn(2, 5, 24)
    torch.testing.assert_close(layer(tokens), nn.functional.linear(tokens, weight, layer.bias))


@pytest.mark.parametrize('path', ['assembled', 'mixed_tokens'])
def test_execution_paths_are_exact(path, monkeypatch):
    linear, _ = twin_networks(budget='1x')
    set_temperature(linear, 0.3)
    linear.eval()
    tokens = torch.randn(3, 4, 16)
    reference = [layer.reference_forward for layer in linear.layers]
    expected = reference[0](tokens)
    monkeypatch.setattr(KWLinear, 'execution_path', lambda self, tokens: path)
    torch.testing.assert_close(linear.layers[0](tokens), expected, atol=1e-5, rtol=1e-5)
    # and the gradients of the mixed-token path match the assembled path's
    out, grad_in, grads = forward_backward(linear, tokens)
    monkeypatch.setattr(KWLinear, 'execution_path', lambda self, tokens: 'assembled')
    ref_out, ref_grad_in, ref_grads = forward_backward(linear, tokens)
    torch.testing.assert_close((out, grad_in, grads), (ref_out, ref_grad_in, ref_grads),
                               atol=1e-5, rtol=1e-4)


def test_path_choice_follows_the_multiply_adds():
    # a ViT block's MLP (cells 192 x 192 from value, fc1 and fc2, n = 9): mixing 197 tokens
    # would cost far more than assembling; a pooled feature (one token) through the release's
    # KW 1/2x classifier (cells 1000 x 32, 40 input groups, n = 20) mixes instead
    vit = nn.Module()
    vit.warehouse_manager = WarehouseManager()
    for name, (c_in, c_out) in dict(v=(192, 192), fc1=(192, 768), fc2=(768, 192)).items():
        setattr(vit, name, KWLinear(c_in, c_out, warehouse_manager=vit.warehouse_manager,
                                    warehouse_name='block'))
    vit.warehouse_manager.build(vit)
    head = nn.Module()
    head.warehouse_manager = WarehouseManager(
        dict(cell_num_ratio=0.5, cell_inplane_ratio=0.025, cell_outplane_ratio=1.0))
    head.fc = KWLinear(1280, 1000, warehouse_manager=head.warehouse_manager,
                       warehouse_name='classifier')
    head.warehouse_manager.build(head)
    assert vit.fc1.execution_path(torch.zeros(1, 197, 192)) == 'assembled'
    assert head.fc.execution_path(torch.zeros(1, 1, 1280)) == 'mixed_tokens'
    with release_formulation():
        assert head.fc.execution_path(torch.zeros(1, 1, 1280)) == 'assembled'


@pytest.mark.parametrize('path', ['assembled', 'mixed_tokens'])
def test_recomputing_and_chunking_keep_the_gradients(path, monkeypatch):
    monkeypatch.setattr(KWLinear, 'execution_path', lambda self, tokens: path)
    tokens = torch.randn(4, 6, 16)
    results = []
    for recompute, chunk_numel in ((False, None), (True, None), (True, 1000)):
        linear, _ = twin_networks(budget='1x', recompute_kernels=recompute)
        if chunk_numel:  # forces several chunks of samples per layer
            monkeypatch.setattr(per_sample_conv, 'KERNEL_CHUNK_NUMEL', chunk_numel)
        results.append(forward_backward(linear, tokens))
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], atol=1e-5, rtol=1e-4)


def test_recompute_share_by_path():
    # 16 -> 24 with 8 x 8 cells: 2 input groups, 3 output groups
    layer = TokenStack().layers[0]
    tokens = torch.randn(2, 5, 16)
    cells = layer.attention.num_cells
    # mixing the tokens: 2 input groups per 8 outputs of the warehouse matmul
    assert layer.recompute_share(tokens, 'mixed_tokens') == pytest.approx(2 / (3 * (2 + 8)))
    # assembling: n cells per weight, which then meets 5 tokens
    assert layer.recompute_share(tokens, 'assembled') == pytest.approx(cells / (3 * (cells + 5)))


@pytest.mark.parametrize('recompute', [False, True])
def test_recompute_assembles_the_weights_again_in_backward(recompute, monkeypatch):
    linear = TokenStack(layers=((16, 16), ), recompute_kernels=recompute)
    monkeypatch.setattr(KWLinear, 'execution_path', lambda self, tokens: 'assembled')
    calls = []
    mix_cells = KWLinear.mix_cells
    monkeypatch.setattr(KWLinear, 'mix_cells',
                        lambda self, attention: calls.append(1) or mix_cells(self, attention))
    linear(torch.randn(2, 3, 16)).sum().backward()
    # kept weights: assembled once; recomputed: again when the gradient reaches the layer
    assert len(calls) == (2 if recompute else 1)


def test_release_formulation_is_equal():
    linear, _ = twin_networks(budget='4x')
    set_temperature(linear, 0.3)
    tokens = torch.randn(2, 5, 16)
    expected = forward_backward(linear, tokens)
    with release_formulation():
        got = forward_backward(linear, tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_input_layouts_and_empty_batches():
    linear = TokenStack().eval()
    layer = linear.layers[0]
    tokens = torch.randn(2, 6, 16)
    # [B, H, W, C] flattens into tokens; [B, C] is one token
    torch.testing.assert_close(layer(tokens.view(2, 2, 3, 16)), layer(tokens).view(2, 2, 3, 24))
    torch.testing.assert_close(layer(tokens[:, 0]), layer(tokens[:, :1])[:, 0])
    empty = torch.zeros(0, 6, 16, requires_grad=True)
    out = layer(empty)
    assert out.shape == (0, 6, 24)
    out.sum().backward()
    assert empty.grad.shape == empty.shape


def test_shares_a_warehouse_with_kw_convs():
    # linear and conv cells alike: a 3x3 KW conv (1x1 cells after spatial partition) and a
    # KWLinear in one warehouse, one state dict, the usual ownership walk
    owner = nn.Module()
    owner.warehouse_manager = WarehouseManager('1x')
    owner.conv = KWConv2d(16, 16, 3, padding=1, warehouse_manager=owner.warehouse_manager,
                          warehouse_name='shared')
    owner.fc = KWLinear(16, 32, warehouse_manager=owner.warehouse_manager,
                        warehouse_name='shared')
    owner.warehouse_manager.build(owner)
    assert owner.warehouse_manager.summary()[0]['n'] == 9 * 1 + 2
    assert owner.fc.attention.start == 9
    assert owner.warehouse_manager.weights[0].shape == (11, 16, 16, 1, 1)
    out = owner.fc(owner.conv(torch.randn(2, 16, 4, 4)).flatten(2).transpose(1, 2))
    out.sum().backward()
    assert owner.warehouse_manager.weights[0].grad[9:].abs().sum() > 0


def test_frozen_warehouse_and_fine_tuning_switch():
    linear = TokenStack(attention_init=None)
    # fine-tuning: the init strategy is off, tau stays 0
    assert set_temperature(linear, 1.0) == 0 and get_temperature(linear) == 0.0
    linear.warehouse_manager.freeze_warehouses_of([linear.layers[0]])
    assert not linear.warehouse_manager.weights[0].requires_grad


def test_state_dict_names_and_deepcopy():
    linear = TokenStack(bias=True, nonlocal_basis_ratio=0.5)
    keys = set(linear.state_dict())
    assert 'warehouse_manager.weights.0' in keys and 'layers.0.bias' in keys
    assert {k.split('attention.')[1] for k in keys if '.attention.' in k} == {
        'fc1.weight', 'norm1.weight', 'norm1.bias', 'norm1.running_mean', 'norm1.running_var',
        'norm1.num_batches_tracked', 'fc2.weight', 'fc3.weight', 'basis_bias'}
    clone = copy.deepcopy(linear)  # e.g. an EMA copy: its layers use its own warehouse
    assert clone.layers[0].warehouse_manager is clone.warehouse_manager
    tokens = torch.randn(2, 3, 16)
    torch.testing.assert_close(clone.eval()(tokens), linear.eval()(tokens))


def test_builds_from_the_registry():
    manager = WarehouseManager()
    layer = MODELS.build(dict(type='KWLinear', in_features=8, out_features=4, bias=False,
                              warehouse_manager=manager, warehouse_name='w'))
    assert isinstance(layer, KWLinear) and layer.bias is None
    assert layer.weight_shape == (4, 8, 1, 1)


def test_clear_errors():
    manager = WarehouseManager()
    with pytest.raises(TypeError, match='needs a WarehouseManager'):
        KWLinear(8, 8, warehouse_manager=None, warehouse_name='w')
    with pytest.raises(ValueError, match='in_features must be a positive integer'):
        KWLinear(0, 8, warehouse_manager=manager, warehouse_name='w')
    layer = KWLinear(8, 8, warehouse_manager=manager, warehouse_name='w')
    with pytest.raises(RuntimeError, match='not bound to its warehouse'):
        layer(torch.randn(2, 3, 8))
    owner = nn.Module()
    owner.layer = layer
    manager.build(owner)
    with pytest.raises(ValueError, match=r'expects input \[B, \*, 8\]'):
        layer(torch.randn(2, 3, 4))
    # KW*'s extra heads are defined on convs only
    starred = WarehouseManager(attention_extra_heads=True)
    owner = nn.Module()
    owner.layer = KWLinear(8, 8, warehouse_manager=starred, warehouse_name='w')
    with pytest.raises(ValueError, match='attention_extra_heads'):
        starred.build(owner)
