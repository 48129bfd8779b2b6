"""KW convs trace into one torch.compile graph: no graph breaks on any execution path."""
import pytest
import torch

from mmkw.ops import per_sample_conv as psc

from test_fast_paths import Pair


@pytest.mark.parametrize('kernels', psc.CPU_KERNELS)
def test_kw_convs_compile_without_graph_breaks(kernels, monkeypatch):
    monkeypatch.setenv('MMKW_CPU_KERNELS', kernels)
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', kernels)
    torch._dynamo.reset()
    pair = Pair(16, 32, 3, 1, 1, '1x', 1.0).eval()

    def forward(x):  # 8x8: assembled kernels (mixture on BLAS), 2x2: mixed input
        return pair.conv(x), pair.conv(x[:, :, :2, :2])

    with torch.no_grad():
        explanation = torch._dynamo.explain(forward)(torch.randn(2, 16, 8, 8))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
