"""The paper's ablation switches (Tables 5-10, 13): each builds, trains a step, and changes what
it claims to change; the ablation configs have the paper's parameter counts."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

import mmkw  # noqa: F401  (registers the modules)
from mmkw.analysis.models import build_model_from_config
from mmkw.models import KWResNet, KWResNet_CIFAR
from mmkw.ops import KWAttention, KWConv2d, WarehouseManager, set_temperature
from mmkw.ops.attention_options import CAF_EPS, apply_attention_function, init_beta

ABLATIONS = Path(__file__).resolve().parents[2] / 'configs' / 'kw_resnet' / 'ablations'

# config -> the paper's parameter count (M) of its row (1000-class head)
PAPER_PARAMS = {
    'kw1x-resnet18_table5-no-partition': 11.78,
    'kw1x-resnet18_table6-layer-sharing': 11.81,
    'kw1x-resnet18_table6-no-sharing': 11.78,
    'kw1x-resnet50_table7-same-dims': 26.95,
    'kw1x-resnet18_table8-softmax': 11.93,
    'kw1x-resnet18_table8-sigmoid': 11.93,
    'kw1x-resnet18_table8-relu-norm': 11.93,
    'kw1x-resnet18_table9-no-init': 11.93,
    'kw1x-resnet18_table13-all-to-one': 11.93,
    'kw4x-resnet18_table13-four-to-one': 45.86,
    'kw0.5x-resnet18_table13-one-to-two': 7.43,
    'kw4x-resnet18_table10-softmax': 45.86,
}


def tiny(**kwargs) -> KWResNet_CIFAR:
    """A two-stage KW ResNet-18 on 8x8 inputs: cheap, yet with shared and reassigned convs."""
    kwargs.setdefault('budget', '1x')
    return KWResNet_CIFAR(18, num_stages=2, strides=(1, 2), out_indices=(1, ),
                          stem_channels=8, base_channels=8, **kwargs)


def train_step(model: nn.Module, tau: float = 0.5) -> torch.Tensor:
    """One SGD step at temperature tau; returns the attentions of the first KW conv."""
    torch.manual_seed(0)
    set_temperature(model, tau)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 8, 8)
    loss = model(x)[-1].pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    manager = model.warehouse_manager
    assert torch.isfinite(loss)
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in manager.weights)
    optimizer.step()
    set_temperature(model, 0.0)
    model.eval()
    conv = next(m for m in model.modules() if isinstance(m, KWConv2d))
    with torch.no_grad():
        return conv.attention(torch.randn(4, conv.in_channels, 8, 8))


def kw_convs(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, KWConv2d)]


# ------------------------------------------------------------------ attention function
@pytest.mark.parametrize('function', ['caf', 'softmax', 'sigmoid', 'relu_norm'])
def test_attention_functions_train_and_have_their_range(function):
    alpha = train_step(tiny(attention_function=function))
    if function == 'softmax':
        assert (alpha > 0).all()
        torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[:2]))
    elif function == 'sigmoid':
        assert ((alpha > 0) & (alpha < 1)).all()
    elif function == 'relu_norm':
        assert (alpha >= 0).all() and (alpha == 0).any()
        assert (alpha.sum(-1) <= 1).all()
    else:
        assert (alpha < 0).any() and (alpha > 0).any()  # CAF's contrasting attentions
        assert (alpha.abs().sum(-1) <= 1).all()


def test_attention_functions_from_the_same_logits():
    z = torch.randn(3, 5, 7)
    caf = apply_attention_function(z, 'caf')
    torch.testing.assert_close(caf, z / (z.abs().sum(-1, keepdim=True) + CAF_EPS))
    torch.testing.assert_close(apply_attention_function(z, 'relu_norm'), caf.clamp(min=0))
    soft = apply_attention_function(z, 'softmax')
    torch.testing.assert_close(soft[..., :-1], torch.softmax(z[..., :-1], -1))
    assert (soft[..., -1] == 0).all()  # the zero cell takes no softmax mass
    torch.testing.assert_close(apply_attention_function(z, 'sigmoid'), torch.sigmoid(z))


def test_tau_one_gives_beta_for_every_function():
    for function in ('softmax', 'sigmoid', 'relu_norm'):
        model = tiny(attention_function=function)
        set_temperature(model, 1.0)
        conv = kw_convs(model)[0]
        with torch.no_grad():
            alpha = conv.attention.eval()(torch.randn(2, conv.in_channels, 8, 8))
        torch.testing.assert_close(alpha, conv.attention.beta[:, :-1].expand_as(alpha))


# ------------------------------------------------------------------ init strategies
def warehouse_betas(model: nn.Module) -> dict:
    """beta [mt, n + 1] stacked per warehouse, in bind order."""
    betas = {}
    for conv in kw_convs(model):
        betas.setdefault(conv.warehouse_index, []).append(conv.attention.beta)
    return {k: torch.cat(v) for k, v in betas.items()}


@pytest.mark.parametrize('budget,strategy', [('1x', 'one_to_one'), ('1x', 'all_to_one'),
                                             ('4x', 'n_to_one'), ('1/2x', 'one_to_n'),
                                             ('1x', None)])
def test_init_strategies_build_train_and_set_beta(budget, strategy):
    model = tiny(budget=budget, attention_init=strategy)
    b = model.warehouse_manager.budget.b
    for beta in warehouse_betas(model).values():
        cells, zero = beta[:, :-1], beta[:, -1]
        if strategy == 'all_to_one':
            assert (cells == 1).all() and (zero == 0).all()
        elif strategy == 'n_to_one':
            # b cells per mixture, every cell exactly once (Figure 5b)
            assert (cells.sum(1) == b).all() and (cells.sum(0) == 1).all()
        elif strategy == 'one_to_n':
            # one cell per mixture, every cell shared by 1/b mixtures, no zero cell (Figure 6b)
            assert (cells.sum(1) == 1).all() and (cells.sum(0) == round(1 / b)).all()
            assert (zero == 0).all()
        else:  # one_to_one (None keeps its beta, never applied)
            assert (cells.sum(0) == 1).all() and (beta.sum(1) == 1).all()
    active = set_temperature(model, 1.0)
    assert active == (0 if strategy is None else len(kw_convs(model)))
    train_step(model)


def test_init_strategy_ownership_initialises_every_cell():
    for budget, strategy in [('4x', 'n_to_one'), ('1/2x', 'one_to_n'), ('1x', 'all_to_one'),
                             ('1.5x', None), ('1.5x', 'all_to_one')]:
        torch.manual_seed(0)
        manager = tiny(budget=budget, attention_init=strategy).warehouse_manager
        for cells in manager.weights:
            # kaiming-initialised, not torch.empty leftovers
            assert torch.isfinite(cells).all()
            assert (cells.flatten(1).std(1) > 0).all() and cells.abs().max() < 10


def test_init_beta_rejects_invalid_combinations():
    with pytest.raises(ValueError, match="'n_to_one'.*b > 1.*b=1"):
        tiny(budget='1x', attention_init='n_to_one')
    with pytest.raises(ValueError, match="'one_to_n'.*b < 1.*b=2"):
        tiny(budget='2x', attention_init='one_to_n')
    with pytest.raises(ValueError, match='divisible by 2.*m=9'):
        init_beta('one_to_n', 9, 8, 0, 0.5)
    with pytest.raises(ValueError, match="attention_init must be one of .*'two_to_one'"):
        tiny(attention_init='two_to_one')


# ------------------------------------------------------------------ sharing range
def test_layer_sharing_gives_one_warehouse_per_conv():
    model = tiny(sharing='layer')
    convs = kw_convs(model)
    summary = model.warehouse_manager.summary()
    assert len(summary) == len(convs)
    for conv in convs:
        row = summary[conv.warehouse_index]
        # a layer-specific warehouse: cells of the conv's own channels, m = n = kh * kw (b = 1)
        assert row['convs'] == 1
        assert row['cell_shape'] == [conv.out_channels, conv.in_channels, 1, 1]
        assert row['n'] == row['mt'] == conv.kernel_size[0] * conv.kernel_size[1]
    assert 'layer2.0.downsample' in model.warehouse_manager.specs
    train_step(model)


def test_no_sharing_uses_only_each_mixtures_own_cell():
    model = tiny(sharing='none')
    layer = tiny(sharing='layer')
    assert [r['n'] for r in model.warehouse_manager.summary()] == \
        [r['n'] for r in layer.warehouse_manager.summary()]
    alpha = train_step(model)
    conv = kw_convs(model)[0]
    m = conv.attention.num_mixtures
    assert conv.attention.fc2.out_features == 2 * m  # own cell + zero cell
    off_diagonal = alpha * (1 - torch.eye(m, conv.attention.num_cells))
    assert (off_diagonal == 0).all() and (alpha.diagonal(dim1=1, dim2=2) != 0).all()
    with pytest.raises(ValueError, match='b = 1'):
        tiny(sharing='none', budget='2x')


def test_block_and_same_dim_sharing():
    model = tiny(sharing='block')
    assert list(model.warehouse_manager.specs) == [
        'layer1.0', 'layer1.1', 'layer2.0.downsample', 'layer2.0.conv1', 'layer2.0',
        'layer2.1']
    exact = tiny(sharing_dims='exact')
    for spec in exact.warehouse_manager.specs.values():
        assert len(set(spec.kernel_shapes)) == 1
    train_step(exact)
    same = KWResNet(50, sharing_dims='same')
    names = list(same.warehouse_manager.specs)
    assert names[:3] == ['stage0_conv2', 'stage0_conv3', 'stage0_conv1']
    for spec in same.warehouse_manager.specs.values():
        # one kernel size per warehouse: the positions of the bottleneck
        assert len({s[2:] for s in spec.kernel_shapes}) == 1


def test_sharing_options_are_checked():
    with pytest.raises(ValueError, match="sharing must be one of .*'global'"):
        tiny(sharing='global')
    with pytest.raises(ValueError, match="sharing_dims must be one of .*'some'"):
        tiny(sharing_dims='some')
    with pytest.raises(ValueError, match="attention_function must be one of .*'tanh'"):
        tiny(attention_function='tanh')
    with pytest.raises(ValueError, match="kernel_partition=False.*sharing_dims='exact'"):
        tiny(kernel_partition=False)


# ------------------------------------------------------------------ kernel partition
def test_no_kernel_partition_cells_are_whole_kernels():
    model = tiny(kernel_partition=False, sharing_dims='exact')
    for conv in kw_convs(model):
        assert conv.cell_shape == conv.weight_shape
        assert conv.attention.num_mixtures == 1
    # at tau = 1 (one-to-one) a conv is a plain conv with its own whole-kernel cell
    set_temperature(model, 1.0)
    conv = kw_convs(model)[1]
    cells = model.warehouse_manager.weights[conv.warehouse_index]
    own = cells[conv.attention.beta[0, :-1].argmax()]
    x = torch.randn(2, conv.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            conv.eval()(x), F.conv2d(x, own, None, conv.stride, conv.padding), atol=1e-5,
            rtol=1e-4)
    train_step(model)


def test_whole_kernel_cells_need_one_kernel_shape():
    manager = WarehouseManager(kernel_partition=False)
    owner = nn.Sequential(
        KWConv2d(8, 8, 3, padding=1, warehouse_manager=manager, warehouse_name='w'),
        KWConv2d(8, 16, 3, padding=1, warehouse_manager=manager, warehouse_name='w'))
    with pytest.raises(ValueError, match="warehouse 'w'.*kernel_partition=False.*shapes"):
        manager.build(owner)


# ------------------------------------------------------------------ ablation configs
def test_every_ablation_config_is_listed():
    assert sorted(p.name.split('_8xb')[0] for p in ABLATIONS.glob('*.py')) == \
        sorted(PAPER_PARAMS)


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_ablation_config_has_the_paper_parameter_count(name):
    path = next(ABLATIONS.glob(f'{name}_8xb*.py'))
    model = build_model_from_config(Config.fromfile(str(path)))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS[name]) < 0.005, f'{name}: {params:.3f}M'
    assert any(isinstance(m, KWAttention) for m in model.modules())
