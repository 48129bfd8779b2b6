"""mmkw's RoIAlign: torchvision's forward pass, and a sparse-matmul backward pass on the CPU
that must give torchvision's gradients for every sampling case (RoIs inside, across and
outside the map, empty and inverted ones, adaptive and fixed sampling, both pixel models)."""
import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

from mmkw.ops.roi_align import RoIAlign, roi_align


def random_rois(num, image_size, batch, generator):
    corner = torch.rand(num, 2, generator=generator) * (image_size + 40) - 20
    size = torch.rand(num, 2, generator=generator) * image_size * 0.6
    rois = torch.cat([corner, corner + size], 1)
    # an empty RoI, an inverted one, one outside the map and one covering all of it
    rois[0] = torch.tensor([30., 30., 30., 30.])
    rois[1] = torch.tensor([50., 40., 20., 10.])
    rois[2] = torch.tensor([-30., -30., -10., -12.])
    rois[3] = torch.tensor([0., 0., image_size, image_size])
    index = torch.randint(0, batch, (num, 1), generator=generator).float()
    return torch.cat([index, rois], 1)


@pytest.mark.parametrize('output_size', [7, (14, 5)])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_gradient_matches_torchvision(output_size, sampling_ratio, aligned, dtype):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 20, 24, generator=generator, dtype=dtype, requires_grad=True)
    rois = random_rois(40, 96, 2, generator).to(dtype)
    args = (output_size, 0.25, sampling_ratio, aligned)
    out = roi_align(features, rois, *args)
    expected = torchvision_roi_align(features, rois, *args)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad_output = torch.randn(out.shape, generator=generator, dtype=dtype)
    grad, = torch.autograd.grad(out, features, grad_output)
    expected_grad, = torch.autograd.grad(expected, features, grad_output)
    assert grad.abs().sum() > 0
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)


def test_gradcheck():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 2, 6, 7, generator=generator, dtype=torch.float64,
                           requires_grad=True)
    rois = torch.tensor([[0., 1.3, 2.2, 20.1, 17.9], [0., -3., 5., 8., 30.]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 3, 0.25, 0, True),
                                    (features, ))


def test_without_gradient_it_is_torchvision():
    features = torch.randn(2, 4, 10, 10)
    rois = torch.tensor([[1., 2., 2., 30., 25.]])
    out = roi_align(features, rois, 7, 0.25)
    assert out.grad_fn is None
    torch.testing.assert_close(out, torchvision_roi_align(features, rois, 7, 0.25, 0, True),
                               rtol=0, atol=0)


def test_module_and_bad_pool_mode():
    layer = RoIAlign(7, spatial_scale=0.125, sampling_ratio=2)
    assert layer.output_size == (7, 7) and 'sampling_ratio=2' in repr(layer)
    features = torch.randn(1, 3, 8, 8, requires_grad=True)
    out = layer(features, torch.tensor([[0., 4., 4., 40., 50.]]))
    assert out.shape == (1, 3, 7, 7)
    with pytest.raises(ValueError, match="pool_mode='avg'"):
        RoIAlign(7, pool_mode='max')


def test_cpu_roi_extractor_matches_mmdet():
    pytest.importorskip('mmdet')
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import mmkw  # noqa: F401 (registers the extractor)
    init_default_scope('mmdet')
    common = dict(out_channels=4, featmap_strides=[4, 8])
    ours = MODELS.build(dict(type='CPUSingleRoIExtractor',
                             roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                             **common))
    theirs = MODELS.build(dict(type='SingleRoIExtractor',
                               roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0,
                                              use_torchvision=True), **common))
    generator = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, 4, 32, 32, generator=generator, requires_grad=True),
             torch.randn(2, 4, 16, 16, generator=generator, requires_grad=True)]
    rois = random_rois(30, 128, 2, generator)
    out, expected = ours(feats, rois), theirs(feats, rois)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad_output = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad(out, feats, grad_output)
    expected_grads = torch.autograd.grad(expected, feats, grad_output)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='pools with RoIAlign'):
        MODELS.build(dict(type='CPUSingleRoIExtractor',
                          roi_layer=dict(type='RoIPool', output_size=7), **common))
    with pytest.raises(ValueError, match='remove use_torchvision'):
        MODELS.build(dict(type='CPUSingleRoIExtractor',
                          roi_layer=dict(type='RoIAlign', output_size=7, use_torchvision=True),
                          **common))
