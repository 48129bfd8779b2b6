"""tools/analysis/benchmark.py on the tiny digits configs: it runs, writes valid JSON, and
its numbers respond to what they measure."""
import json
import os.path as osp
import runpy

import pytest
import torch

from mmkw.analysis.benchmark import BenchmarkSettings, ModelUnderTest, peak_train_memory

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
KW = osp.join(ROOT, 'configs/kw_resnet/kw1x-resnet18_1xb16_digits.py')
PLAIN = osp.join(ROOT, 'configs/kw_resnet/resnet18_1xb16_digits.py')


def run_tool(argv):
    module = runpy.run_path(osp.join(ROOT, 'tools/analysis/benchmark.py'))
    return module['main'](argv)


def test_compare_writes_json_with_every_measurement(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    run_tool([KW, '--compare', PLAIN, '--shape', '16', '--batch-size', '2', '--repeats', '2',
              '--warmup', '1', '--memory-batch', '2', '--threads', '1', '--out', str(out)])
    report = json.loads(out.read_text())
    kw, plain = 'kw1x-resnet18_1xb16_digits', 'resnet18_1xb16_digits'
    assert list(report['models']) == [kw, plain]
    for name in (kw, plain):
        result = report['models'][name]
        for key in ('latency', 'inference', 'train'):
            assert result[key]['runs'] == 2 and result[key]['median_s'] > 0
            assert result[key]['min_s'] <= result[key]['median_s'] <= result[key]['max_s']
        assert result['gflops'] > 0
        # the peak of a training step holds at least the parameters and their gradients
        assert result['memory']['peak_bytes'] >= 2 * 4 * result['params']
    assert report['models'][kw]['params'] > report['models'][plain]['params']
    # KW adds the kernel assembly and the attentions to the multiply-adds
    assert report['models'][kw]['flops'] > report['models'][plain]['flops']
    ratios = report['ratios'][f'{kw} vs {plain}']
    expected = (report['models'][plain]['train']['median_s'] /
                report['models'][kw]['train']['median_s'])
    assert ratios['train_speed'] == pytest.approx(expected)
    assert ratios['params_ratio'] == pytest.approx(
        report['models'][kw]['params'] / report['models'][plain]['params'])
    screen = capsys.readouterr().out
    assert kw in screen and 'train_speed' in screen
    # which CPU and kernel libraries the numbers were measured with
    environment = report['environment']
    assert environment['cpu']
    for choice in ('cpu_kernels', 'matmul_kernels'):
        assert set(environment[choice]) == {'train', 'inference'}
        assert set(environment[choice].values()) <= {'blas', 'onednn'}


def test_release_formulation_is_timed_beside_the_model(tmp_path):
    out = tmp_path / 'bench.json'
    run_tool([KW, '--release-formulation', '--shape', '16', '--batch-size', '2', '--repeats',
              '2', '--warmup', '0', '--measure', 'params', 'inference', 'train', '--threads',
              '1', '--out', str(out)])
    report = json.loads(out.read_text())
    kw = 'kw1x-resnet18_1xb16_digits'
    release = f'{kw} (release formulation)'
    assert list(report['models']) == [kw, release]
    assert report['models'][release]['params'] == report['models'][kw]['params']
    ratios = report['ratios'][f'{kw} vs {release}']
    assert ratios['inference_speed'] == pytest.approx(
        report['models'][release]['inference']['median_s'] /
        report['models'][kw]['inference']['median_s'])
    assert report['configs']['release_formulation'] is True


def test_peak_memory_grows_with_the_batch():
    from torchvision.models import resnet18
    settings = BenchmarkSettings(shape=(32, 32))
    unit = ModelUnderTest('r18', resnet18(num_classes=10), settings)
    small = peak_train_memory(unit, 2)['peak_bytes']
    large = peak_train_memory(unit, 16)['peak_bytes']
    params = sum(p.numel() * 4 for p in unit.model.parameters())
    # activations of 14 more 32x32 samples; parameters, gradients and momentum stay the same
    assert large > small > 3 * params


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match='unknown measurement'):
        BenchmarkSettings(measure=('speed', ))
    with pytest.raises(ValueError, match='batch_size'):
        BenchmarkSettings(batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA device'):
            BenchmarkSettings(device='cuda')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        run_tool(['configs/missing.py'])


# ------------------------------------------------------------ every method, any set of configs
TINY_CONFIG = """
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='DynamicResNet_CIFAR', depth=18, conv_cfg={conv_cfg}, num_stages=2,
                  strides=(1, 2), dilations=(1, 1), out_indices=(1, ), stem_channels=8,
                  base_channels=8),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=16,
              loss=dict(type='CrossEntropyLoss')))
"""
METHODS = {
    'plain': None,
    'odconv': dict(type='ODConv', kernel_num=4),
    'dyconv': dict(type='DyConv', kernel_num=4),
    'kw': dict(type='KW', budget='1x'),
}


def tiny_config(tmp_path, method):
    path = tmp_path / f'tiny-{method}.py'
    path.write_text(TINY_CONFIG.format(conv_cfg=METHODS[method]))
    return str(path)


def test_any_set_of_configs_against_the_first(tmp_path, capsys):
    configs = [tiny_config(tmp_path, m) for m in ('plain', 'odconv', 'dyconv', 'kw')]
    out, png = tmp_path / 'bench.json', tmp_path / 'ratios.png'
    run_tool(configs + ['--shape', '16', '--batch-size', '2', '--repeats', '2', '--warmup',
                        '0', '--measure', 'params', 'flops', 'inference', '--threads', '1',
                        '--out', str(out), '--plot', str(png), '--markdown'])
    report = json.loads(out.read_text())
    names = ['tiny-plain', 'tiny-odconv', 'tiny-dyconv', 'tiny-kw']
    assert list(report['models']) == names and report['reference'] == 'tiny-plain'
    assert report['configs']['configs'] == configs
    assert set(report['ratios']) == {f'{name} vs tiny-plain' for name in names[1:]}
    models = report['models']
    assert models['tiny-plain']['dynamic_convs'] == {}
    assert models['tiny-odconv']['dynamic_convs'] == {'ODConv2d': 8}  # block convs only
    assert models['tiny-dyconv']['dynamic_convs'] == {'DyConv2d': 9}  # and the shortcut
    for name in names[1:]:
        ratio = report['ratios'][f'{name} vs tiny-plain']
        assert ratio['params_ratio'] == pytest.approx(
            models[name]['params'] / models['tiny-plain']['params'])
        assert ratio['inference_speed'] == pytest.approx(
            models['tiny-plain']['inference']['median_s'] / models[name]['inference']['median_s'])
        # the same network with dynamic convs: their kernel mixtures and attentions add
        # multiply-adds, and the analyzer met no op it could not count among them
        assert models[name]['flops'] > models['tiny-plain']['flops']
        assert 'flops_error' not in models[name]
    screen = capsys.readouterr().out
    assert '| tiny-kw | ' in screen and '| tiny-plain (reference) |' in screen  # Markdown
    from PIL import Image
    with Image.open(png) as image:
        assert image.format == 'PNG' and image.size[0] > 400 and image.size[1] > 300


def test_release_formulation_of_each_dynamic_model(tmp_path, capsys):
    plain, odconv = tiny_config(tmp_path, 'plain'), tiny_config(tmp_path, 'odconv')
    out = tmp_path / 'bench.json'
    run_tool([plain, odconv, '--release-formulation', '--shape', '16', '--batch-size', '2',
              '--repeats', '1', '--warmup', '0', '--measure', 'params', 'train', '--threads',
              '1', '--out', str(out)])
    report = json.loads(out.read_text())
    twin = 'tiny-odconv (release formulation)'
    # a plain network has no release formulation of its own: no twin for it
    assert list(report['models']) == ['tiny-plain', 'tiny-odconv', twin]
    assert 'no dynamic convs' in capsys.readouterr().err
    assert set(report['ratios']) == {'tiny-odconv vs tiny-plain', f'{twin} vs tiny-plain',
                                     f'tiny-odconv vs {twin}'}
    assert report['models'][twin]['params'] == report['models']['tiny-odconv']['params']


def test_plot_needs_ratios(tmp_path):
    with pytest.raises(SystemExit, match='--plot draws ratios'):
        run_tool([tiny_config(tmp_path, 'plain'), '--plot', str(tmp_path / 'x.png'),
                  '--measure', 'params'])


@pytest.mark.parametrize('layer', ['DyConv2d', 'ODConv2d'])
def test_flops_of_a_kernel_mixture_conv_are_its_release_formulation(layer):
    # one K-kernel conv on a 1x8x10x10 input: the analyzer counts the attention's layers, the
    # mixture of the K kernels (a [1, K] x [K, weights] matmul) and one conv with the mixed
    # kernel, as the ODConv release computes it and the KW paper counts it
    from mmkw.analysis.benchmark import count_flops
    from mmkw.ops import DyConv2d, ODConv2d
    c_in, c_out, k, kernels, size = 3, 16, 3, 4, 10
    if layer == 'DyConv2d':
        conv = DyConv2d(c_in, c_out, k, padding=1, kernel_num=kernels, reduction=1.0)
        attention = c_in * c_in + c_in * kernels  # fc1, fc2 (linear, batch 1)
    else:
        conv = ODConv2d(c_in, c_out, k, padding=1, kernel_num=kernels)
        hidden = conv.attention.hidden_channels
        # fc, then the channel, filter, spatial and kernel heads (1x1 convs on a 1x1 map)
        attention = c_in * hidden + hidden * (c_in + c_out + k * k + kernels)
    weights = c_out * c_in * k * k
    expected = attention + kernels * weights + weights * size * size
    flops = count_flops(conv, (size, size), 'cpu')
    # BatchNorm (ODConv's trunk) is counted by mmengine as a few flops per element at most
    assert expected <= flops['flops'] <= expected + 5 * 64


def test_detector_config_is_benchmarked_through_its_tensor_forward(tmp_path):
    # mmdet configs alike: Mask R-CNN's tensor-mode forward (backbone, neck, RPN and RoI heads)
    config = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_kw1x-r18-slim_fpn_shapes.py')
    out = tmp_path / 'bench.json'
    report = run_tool([config, '--shape', '64', '--batch-size', '1', '--repeats', '1',
                       '--warmup', '0', '--measure', 'params', 'inference', 'train',
                       '--threads', '1', '--out', str(out)])
    result = report['models']['mask-rcnn_kw1x-r18-slim_fpn_shapes']
    assert result['dynamic_convs']['KWConv2d'] > 0
    assert result['inference']['median_s'] > 0 and result['train']['median_s'] > 0


def test_kerneldna_deploy_folding_is_timed_beside_the_model(tmp_path):
    out = tmp_path / 'bench.json'
    kdna = osp.join(ROOT, 'configs/kdna_resnet/kdna-resnet18_1xb16_digits.py')
    run_tool([kdna, '--fold-static-kernels', '--shape', '16', '--batch-size', '2', '--repeats',
              '2', '--warmup', '0', '--measure', 'params', 'inference', '--threads', '1',
              '--out', str(out)])
    report = json.loads(out.read_text())
    name = 'kdna-resnet18_1xb16_digits'
    folded = f'{name} (folded)'
    assert list(report['models']) == [name, folded]
    assert report['models'][folded]['params'] == report['models'][name]['params']
    ratios = report['ratios'][f'{folded} vs {name}']
    assert ratios['inference_speed'] == pytest.approx(
        report['models'][name]['inference']['median_s'] /
        report['models'][folded]['inference']['median_s'])
    with pytest.raises(SystemExit, match='--fold-static-kernels times inference'):
        run_tool([kdna, '--fold-static-kernels', '--measure', 'train'])
