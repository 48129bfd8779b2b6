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
