"""DyConv2d as the notes reconstruct DY-Conv (peers_format.md §3): attention math, hidden width,
parameter count, the CAF option (Table 10), building and errors. Execution paths against the
per-sample reference: tests/test_ops/test_dynamic_conv_contract.py."""
import pytest
import torch
import torch.nn.functional as F

from mmkw.ops import DyConv2d, DyConvAttention, set_temperature
from mmkw.ops.attention_options import CAF_EPS


def dyconv_param_count(c_in, c_out, k, groups=1, kernel_num=4):
    """The notes' count of one DY-Conv layer: K kernels, fc1 C_in -> int(C_in / 4) and fc2
    -> K, both with bias."""
    hidden = int(c_in / 4)
    return kernel_num * c_out * c_in // groups * k * k + c_in * hidden + hidden + \
        hidden * kernel_num + kernel_num


@pytest.mark.parametrize('c_in, c_out, k, groups', [
    (64, 64, 3, 1), (64, 256, 1, 1), (960, 960, 3, 960), (16, 8, 1, 1), (24, 144, 1, 1),
    (8, 8, 3, 8), (144, 24, 1, 1)])
def test_parameter_count_and_hidden_width(c_in, c_out, k, groups):
    conv = DyConv2d(c_in, c_out, k, groups=groups)
    assert conv.attention.hidden_channels == int(c_in / 4)
    assert sum(p.numel() for p in conv.parameters()) == dyconv_param_count(c_in, c_out, k,
                                                                           groups)


def test_hidden_width_is_int_of_a_quarter():
    # every small width and the widths of the ResNet and MobileNetV2 convs
    widths = list(range(4, 65)) + [72, 88, 96, 120, 144, 192, 240, 256, 288, 320, 384, 480,
                                   512, 576, 960, 1024, 2048]
    for c_in in widths:
        assert DyConvAttention(c_in).hidden_channels == int(c_in / 4), c_in
    assert DyConvAttention(3).hidden_channels == 1  # below 4 channels: one hidden unit


def by_hand(conv: DyConv2d, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(fc2(relu(fc1(GAP(x)))) / T), then the conv with sum_k pi_k W_k, per sample."""
    attention = conv.attention
    z = attention.fc2(F.relu(attention.fc1(x.mean(dim=(2, 3)))))
    pi = torch.softmax(z / temperature, dim=1)
    outs = []
    for b in range(x.shape[0]):
        weight = sum(pi[b, k] * conv.weight[k] for k in range(conv.kernel_num))
        outs.append(F.conv2d(x[b:b + 1], weight, conv.bias, conv.stride, conv.padding,
                             conv.dilation, conv.groups))
    return torch.cat(outs)


@pytest.mark.parametrize('temperature', [1.0, 30.0])
def test_output_is_the_softmax_mixture_of_kernels(temperature):
    torch.manual_seed(0)
    conv = DyConv2d(16, 24, 3, stride=2, padding=1, bias=True)
    torch.nn.init.normal_(conv.bias)
    torch.nn.init.normal_(conv.attention.fc2.bias)
    set_temperature(conv, temperature)
    x = torch.randn(1, 16, 9, 9)  # no norm in the attention: one sample trains
    torch.testing.assert_close(conv.train()(x), by_hand(conv, x, temperature), atol=1e-5,
                               rtol=1e-5)
    pi, = conv.attend(torch.randn(4, 16, 5, 5))
    torch.testing.assert_close(pi.sum(1), torch.ones(4))


def test_caf_replaces_the_softmax():
    torch.manual_seed(0)
    conv = DyConv2d(16, 24, 3, attention_function='caf')
    torch.nn.init.normal_(conv.attention.fc2.bias)
    x = torch.randn(3, 16, 6, 6)
    attention = conv.attention
    z = attention.fc2(F.relu(attention.fc1(x.mean(dim=(2, 3)))))
    pi, = conv.attend(x)
    torch.testing.assert_close(pi, z / (z.abs().sum(1, keepdim=True) + CAF_EPS))
    assert (pi < 0).any()
    set_temperature(conv, 30.0)
    torch.testing.assert_close(conv.attend(x)[0],
                               z / (z.abs().sum(1, keepdim=True) + 30 * CAF_EPS))
    softmax = DyConv2d(16, 24, 3)
    assert sum(p.numel() for p in softmax.parameters()) == \
        sum(p.numel() for p in conv.parameters())


def test_build_conv_layer_builds_it():
    mmcv_cnn = pytest.importorskip('mmcv.cnn')
    import mmkw  # noqa: F401
    conv = mmcv_cnn.build_conv_layer(
        dict(type='DyConv2d', kernel_num=4, recompute_kernels=True), 16, 32, 1, stride=2,
        padding=0, groups=1, bias=False)
    assert isinstance(conv, DyConv2d) and conv.recompute_kernels is True
    assert conv(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match='kernel_num must be a positive int'):
        DyConv2d(16, 32, 3, kernel_num=2.0)
    with pytest.raises(ValueError, match='attention_function must be one of'):
        DyConv2d(16, 32, 3, attention_function='relu_norm')
    with pytest.raises(ValueError, match='must be divisible by groups'):
        DyConv2d(16, 30, 3, groups=4)
    with pytest.raises(ValueError, match=r'DyConv2d expects input \[B, 16, H, W\]'):
        DyConv2d(16, 32, 3)(torch.randn(2, 8, 6, 6))
    with pytest.raises(ValueError, match=r"'weight' has shape \[4, 32, 16, 3, 3\] .*K=2"):
        DyConv2d(16, 32, 3, kernel_num=2).load_state_dict(DyConv2d(16, 32, 3).state_dict())
