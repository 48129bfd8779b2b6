"""ODConv2d against the official layer: fixtures, state-dict names, skip rules, parameter count,
the CAF option (Table 10) and errors."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import SHARED
from mmkw.ops import ODConv2d, get_temperature, set_temperature
from mmkw.ops.attention_options import CAF_EPS

FIXTURES = SHARED / 'fixtures' / 'official_odconv'
CASES = ['od_k4', 'od_k1']


class ODStack(nn.Module):
    """The fixtures' network: official ODConv layers in sequence, a ReLU after each."""

    def __init__(self, desc: dict) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            ODConv2d(layer['in'], layer['out'], layer['k'], layer['stride'], layer['k'] // 2,
                     groups=layer['groups'], kernel_num=desc['kernel_num'],
                     reduction=desc['reduction'], min_channels=desc['min_channel'])
            for layer in desc['layers']
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return x


def official_to_stack(key: str) -> str:
    # the layers keep the release's names; only the container's path differs
    assert key.startswith('convs.'), key
    return 'layers.' + key[len('convs.'):]


def load_case(case: str):
    if not FIXTURES.is_dir():
        pytest.skip(f'official ODConv fixtures not found at {FIXTURES} (../shared is absent)')
    desc = json.loads((FIXTURES / f'{case}.json').read_text())
    data = torch.load(FIXTURES / f'{case}.pt', weights_only=True)
    net = ODStack(desc)
    state = {official_to_stack(k): v for k, v in data['state_dict'].items()}
    net.load_state_dict(state, strict=True)
    return desc, data, net


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # The fixtures' values are small (od_k4's outputs are below 1.4e-5, its gradients below
    # 1e-9), so an absolute 1e-5 would accept anything: the tolerance is 1e-5 of the
    # reference's largest magnitude.
    scale = expected.abs().max().item()
    assert scale > 0, what
    torch.testing.assert_close(actual, expected, atol=1e-5 * scale, rtol=0, msg=what)


@pytest.mark.parametrize('case', CASES)
def test_state_dict_has_the_official_names_and_shapes(case):
    desc, _, net = load_case(case)
    ours = {official_to_stack(k): list(shape) for k, shape in desc['state_dict'].items()}
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == ours


@pytest.mark.parametrize('case', CASES)
def test_official_outputs_in_eval_at_every_temperature(case):
    _, data, net = load_case(case)
    net.eval()
    outputs = {}
    for temperature, expected in data['outputs_eval'].items():
        assert set_temperature(net, float(temperature)) == len(net.layers)
        with torch.no_grad():
            outputs[temperature] = net(data['input'])
        assert_close_to_scale(outputs[temperature], expected, f'{case} T={temperature}')
    # the temperature matters at this tolerance: T = 30 is not T = 1
    reference = data['outputs_eval']['1.0']
    assert (outputs['30.0'] - reference).abs().max() > 1e-3 * reference.abs().max()


@pytest.mark.parametrize('case', CASES)
def test_official_output_and_gradients_in_training(case):
    _, data, net = load_case(case)
    net.train()
    assert get_temperature(net) == 1.0
    out = net(data['input'])
    assert_close_to_scale(out, data['out_train'], f'{case} train output')
    (out ** 2).mean().backward()
    names = {official_to_stack(k): k for k in data['grads']}
    params = dict(net.named_parameters())
    assert set(names) == set(params)
    for name, official in names.items():
        assert_close_to_scale(params[name].grad, data['grads'][official],
                              f'{case} gradient of {official}')


def odconv_param_count(c_in, c_out, k, groups, kernel_num, reduction=1 / 16, min_channels=16):
    """The notes' count (peers_format.md §2) of one ODConv layer."""
    hidden = max(int(c_in * reduction), min_channels)
    count = kernel_num * c_out * c_in // groups * k * k  # weight
    count += c_in * hidden + 2 * hidden  # fc (no bias), bn
    count += hidden * c_in + c_in  # channel head
    if not (c_in == groups == c_out):
        count += hidden * c_out + c_out  # filter head
    if k > 1:
        count += hidden * k * k + k * k  # spatial head
    if kernel_num > 1:
        count += hidden * kernel_num + kernel_num  # kernel head
    return count


@pytest.mark.parametrize('c_in, c_out, k, groups, kernel_num, reduction', [
    (64, 64, 3, 1, 4, 1 / 16),      # ResNet-18 stage 1 conv
    (512, 2048, 1, 1, 4, 1 / 16),   # ResNet-50 last 1x1 conv: hidden 32
    (96, 96, 3, 96, 4, 1 / 16),     # MobileNetV2 depthwise: no filter head
    (32, 64, 3, 32, 4, 1 / 16),     # depthwise with a multiplier keeps the filter head
    (48, 48, 3, 4, 1, 1 / 4),       # grouped, K = 1: no kernel head
    (320, 1280, 1, 1, 1, 1 / 16),   # K = 1, 1x1: channel and filter heads only
])
def test_parameter_count_of_one_layer(c_in, c_out, k, groups, kernel_num, reduction):
    conv = ODConv2d(c_in, c_out, k, groups=groups, kernel_num=kernel_num, reduction=reduction)
    assert sum(p.numel() for p in conv.parameters()) == \
        odconv_param_count(c_in, c_out, k, groups, kernel_num, reduction)
    heads = {name for name in ('filter_fc', 'spatial_fc', 'kernel_fc')
             if hasattr(conv.attention, name)}
    assert ('filter_fc' in heads) == (not c_in == groups == c_out)
    assert ('spatial_fc' in heads) == (k > 1)
    assert ('kernel_fc' in heads) == (kernel_num > 1)


def test_init_follows_the_release():
    torch.manual_seed(0)
    conv = ODConv2d(64, 128, 3, padding=1, kernel_num=4)
    # kaiming-normal fan_out per kernel: std sqrt(2 / (C_out k k))
    expected_std = (2 / (128 * 9)) ** 0.5
    for kernel in conv.weight:
        assert abs(kernel.std().item() / expected_std - 1) < 0.05
    attention = conv.attention
    assert torch.all(attention.bn.weight == 1) and torch.all(attention.bn.bias == 0)
    for head in (attention.channel_fc, attention.filter_fc, attention.spatial_fc,
                 attention.kernel_fc):
        assert torch.all(head.bias == 0)
    assert attention.fc.bias is None


def test_build_conv_layer_builds_it():
    mmcv_cnn = pytest.importorskip('mmcv.cnn')
    import mmkw  # noqa: F401
    conv = mmcv_cnn.build_conv_layer(
        dict(type='ODConv2d', kernel_num=4, attention_function='caf'), 16, 32, 3, stride=2,
        padding=1, groups=2, bias=False)
    assert isinstance(conv, ODConv2d)
    assert (conv.stride, conv.padding, conv.groups, conv.kernel_num) == ((2, 2), (1, 1), 2, 4)
    assert conv.attention_function == 'caf' and conv.bias is None
    assert conv(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_execution_paths():
    x = torch.randn(2, 16, 6, 6)
    assert ODConv2d(16, 32, 1, kernel_num=1).execution_path(x) == 'plain'
    assert ODConv2d(16, 32, 1, kernel_num=4).execution_path(x) == 'assembled'
    assert ODConv2d(16, 32, 3, kernel_num=1).execution_path(x) == 'assembled'
    assert ODConv2d(16, 32, 1, kernel_num=1).held_numel(x, 'plain') == 0


def kernel_logits(conv: ODConv2d, x: torch.Tensor) -> torch.Tensor:
    attention = conv.attention
    hidden = attention.relu(attention.bn(attention.fc(x.mean(dim=(2, 3), keepdim=True))))
    return attention.kernel_fc(hidden).flatten(1)


def test_caf_replaces_the_softmax_over_kernels():
    torch.manual_seed(0)
    softmax = ODConv2d(16, 32, 3, padding=1, kernel_num=4).eval()
    caf = ODConv2d(16, 32, 3, padding=1, kernel_num=4, attention_function='caf').eval()
    caf.load_state_dict(softmax.state_dict())  # same parameters: only the function differs
    nn.init.normal_(caf.attention.kernel_fc.bias)
    x = torch.randn(3, 16, 8, 8)
    with torch.no_grad():
        z = kernel_logits(caf, x)
        alpha = caf.attend(x)[-1]
        torch.testing.assert_close(alpha, z / (z.abs().sum(1, keepdim=True) + CAF_EPS))
        assert (alpha < 0).any()  # CAF's negative attentions
        torch.testing.assert_close(softmax.attend(x)[-1].sum(1), torch.ones(3))
        # CAF ignores the temperature but for its epsilon; the sigmoid heads do not
        set_temperature(caf, 30.0)
        alpha_30 = caf.attend(x)
        torch.testing.assert_close(alpha_30[-1], z / (z.abs().sum(1, keepdim=True) +
                                                      30 * CAF_EPS))
        set_temperature(caf, 1.0)
        assert not torch.allclose(alpha_30[0], caf.attend(x)[0])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match='kernel_num must be a positive int'):
        ODConv2d(16, 32, 3, kernel_num=0)
    with pytest.raises(ValueError, match='attention_function must be one of'):
        ODConv2d(16, 32, 3, attention_function='sigmoid')
    with pytest.raises(ValueError, match=r'temperature must be in \[1.0, inf\]'):
        set_temperature(ODConv2d(16, 32, 3), 0.5)
    four = ODConv2d(16, 32, 3, kernel_num=4).state_dict()
    with pytest.raises(ValueError, match=r"'weight' has shape \[4, 32, 16, 3, 3\] but this "
                       r'layer .*K=2.* needs \[2, 32, 16, 3, 3\]'):
        ODConv2d(16, 32, 3, kernel_num=2).load_state_dict(four)
    conv = ODConv2d(16, 32, 3).train()
    with pytest.raises(ValueError, match='ODConv attention .* one sample in training mode'):
        conv(torch.randn(1, 16, 8, 8))
    conv.eval()
    assert conv(torch.randn(1, 16, 8, 8)).shape == (1, 32, 6, 6)
