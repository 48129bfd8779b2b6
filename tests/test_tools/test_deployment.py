"""Deployment (issue 16): the export formulation of the dynamic convs, ONNX export with a dynamic
batch through ``tools/deployment/pytorch2onnx.py`` checked in onnxruntime, ``torch.jit.trace``
for any batch size, and mmpretrain's / mmdet's inferencers with mmkw configs and checkpoints.

The ONNX tests need the ``deploy`` extra (``requirements/deploy.txt``), which
``tools/setup_env.sh`` installs; without it they are skipped with that reason.
"""
import importlib.util
import io
import json
import os.path as osp
from typing import Dict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from mmkw.analysis.models import build_model_from_config
from mmkw.deployment import (ExportableModel, calibrate_batch_norms, export_onnx,
                             image_like_inputs, verify_onnx)
from mmkw.ops import export_formulation, in_export_formulation
from mmkw.ops import per_sample_conv as psc

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIGITS_CONFIG = osp.join(ROOT, 'configs/kw_resnet/kw1x-resnet18_1xb16_digits.py')
DETECTOR_CONFIG = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_kw1x-r18-slim_fpn_shapes.py')
TOOL = osp.join(ROOT, 'tools/deployment/pytorch2onnx.py')

# a two-stage CIFAR ResNet-18 (8 and 16 channels) per method: quick to build, trace and export
TINY = dict(depth=18, num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(1, ),
            stem_channels=8, base_channels=8)
BACKBONES: Dict[str, dict] = {
    'kw': dict(type='DynamicResNet_CIFAR', conv_cfg=dict(type='KW', budget='1x'), **TINY),
    'kwstar': dict(type='DynamicResNet_CIFAR', conv_cfg=dict(type='KWStar'), **TINY),
    'odconv': dict(type='DynamicResNet_CIFAR', conv_cfg=dict(type='ODConv', kernel_num=4),
                   **TINY),
    'dyconv': dict(type='DynamicResNet_CIFAR', conv_cfg=dict(type='DyConv', kernel_num=4),
                   **TINY),
    # KernelDNA keeps the release's four stages
    'kerneldna': dict(type='KDNAResNet_CIFAR', depth=18, stem_channels=8, base_channels=8),
}
FEATURES = {'kerneldna': 64}


def tiny_config(method: str) -> Config:
    return Config(dict(
        custom_imports=dict(imports=['mmkw'], allow_failed_imports=False),
        data_preprocessor=dict(num_classes=5, mean=[127.5] * 3, std=[127.5] * 3),
        model=dict(type='ImageClassifier', backbone=BACKBONES[method],
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=5,
                             in_channels=FEATURES.get(method, 16),
                             loss=dict(type='CrossEntropyLoss')))))


def calibrated(model: nn.Module, size: int = 16) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics estimated on image-like inputs (with
    the initial ones, a random deep network's eval-mode outputs vanish; estimated on i.i.d.
    noise, the attentions' statistics have near-zero variances that amplify float32 rounding:
    see :func:`~mmkw.deployment.calibrate_batch_norms`)."""
    return calibrate_batch_norms(model, image_like_inputs((8, 3, size, size)))


def tiny_classifier(method: str) -> nn.Module:
    torch.manual_seed(0)
    return calibrated(build_model_from_config(tiny_config(method)))


def save_checkpoint(model: nn.Module, path, classes=None) -> str:
    meta = {} if classes is None else {'dataset_meta': {'classes': list(classes)}}
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, path)
    return str(path)


def load_tool():
    spec = importlib.util.spec_from_file_location('pytorch2onnx', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_onnx(exporter: str = 'dynamo'):
    pytest.importorskip('onnx', reason='the deploy extra (requirements/deploy.txt) is missing')
    pytest.importorskip('onnxruntime',
                        reason='the deploy extra (requirements/deploy.txt) is missing')
    if exporter == 'dynamo':
        pytest.importorskip('onnxscript',
                            reason='the deploy extra (requirements/deploy.txt) is missing')


# ---------------------------------------------------------------- the export formulation
@pytest.mark.parametrize('case', [
    dict(kernel=3, stride=1, padding=1, dilation=1, groups=1, size=20),  # above the unfold cap
    dict(kernel=3, stride=2, padding=1, dilation=1, groups=4, size=15),
    dict(kernel=3, stride=1, padding=2, dilation=2, groups=8, size=12),  # depthwise, dilated
    dict(kernel=1, stride=2, padding=0, dilation=1, groups=1, size=9),
], ids=['3x3-large-map', 'grouped-strided', 'depthwise-dilated', '1x1-strided'])
def test_per_sample_conv_export_branch_is_exact(case):
    """Under export_formulation every per-sample conv is unfold + batched matmul: equal to a
    conv per sample, also on maps where the normal path is the grouped conv."""
    torch.manual_seed(0)
    batch, channels, out_channels = 3, 8, 16
    x = torch.randn(batch, channels, case['size'], case['size'])
    weight = torch.randn(batch, out_channels, channels // case['groups'], case['kernel'],
                         case['kernel'])
    args = ((case['stride'], ) * 2, (case['padding'], ) * 2, (case['dilation'], ) * 2,
            case['groups'])
    expected = torch.cat([F.conv2d(x[b:b + 1], weight[b], None, *args) for b in range(batch)])
    assert not in_export_formulation()
    with export_formulation():
        assert in_export_formulation()
        out = psc.per_sample_conv2d(x, weight, *args)
    assert not in_export_formulation()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', list(BACKBONES))
def test_export_formulation_equals_the_normal_forward(method, one_thread):
    """A whole classifier of each method, eval and training (forward and gradients), in
    float64: the formulations must agree far beyond float32 rounding, which a deep network
    amplifies (a random KW network's float32 logits are only good to about 1e-5)."""
    model = tiny_classifier(method).double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        with export_formulation():
            out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)

    model.train()
    grads = []
    for use_export in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        if use_export:
            with export_formulation():
                loss = model(x).square().sum()
        else:
            loss = model(x).square().sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-12,
                                   msg=name)


# ---------------------------------------------------------------- TorchScript
@pytest.mark.parametrize('method', list(BACKBONES) + ['kw-resnet18-digits'])
def test_jit_trace_runs_any_batch_size(method, one_thread):
    """torch.jit.trace at batch 2 gives a graph that runs batches of 1, 3 and 5 exactly (the
    convs switch to the export formulation while traced). In float64, so that "exactly" is
    not blurred by float32 rounding."""
    if method == 'kw-resnet18-digits':
        model = calibrated(build_model_from_config(DIGITS_CONFIG))
    else:
        model = tiny_classifier(method)
    module = ExportableModel(model).double().eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.randn(2, 3, 16, 16, dtype=torch.float64),
                                 check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        for batch in (1, 3, 5):
            x = torch.randn(batch, 3, 16, 16, dtype=torch.float64)
            expected = module(x)
            torch.testing.assert_close(traced(x), expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(loaded(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('method', ['kw', 'odconv', 'kerneldna'])
def test_jit_script_error_points_to_trace_and_export(method):
    """torch.jit.script cannot compile the dynamic convs: the error says what works."""
    model = build_model_from_config(tiny_config(method)).backbone.eval()
    with pytest.raises(RuntimeError, match=r'torch\.jit\.script.*torch\.jit\.trace.*'
                       r'torch\.export\.export.*pytorch2onnx'):
        torch.jit.script(model)


# ---------------------------------------------------------------- ONNX: the verifier itself
class Affine(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return x.flatten(1) * self.scale


def test_verify_catches_a_wrong_graph_and_all_zero_outputs(tmp_path):
    needs_onnx('torchscript')
    path = str(tmp_path / 'affine.onnx')
    export_onnx(Affine(2.0), path, (2, 3, 4, 4), exporter='torchscript')
    rows = verify_onnx(Affine(2.0), path, (2, 3, 4, 4), [1, 3])
    assert [row['batch'] for row in rows] == [1, 3]
    assert all(row['max_rel_error'] <= 1e-6 for row in rows)
    with pytest.raises(AssertionError, match='max relative error'):
        verify_onnx(Affine(2.001), path, (2, 3, 4, 4), [2])
    with pytest.raises(AssertionError, match='all zeros'):
        verify_onnx(Affine(0.0), path, (2, 3, 4, 4), [2])


# ---------------------------------------------------------------- ONNX: the tool
def run_tool(capsys, *argv) -> tuple:
    code = load_tool().main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verified_errors(out: str) -> Dict[int, float]:
    errors = {}
    for line in out.splitlines():
        if line.startswith('verify: batch'):
            words = line.split()
            errors[int(words[2].rstrip(':'))] = float(words[6])
    return errors


def onnx_graph(path: str):
    import onnx
    model = onnx.load(path)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    ops = [node.op_type for node in model.graph.node]
    return dims, ops, {p.key: p.value for p in model.metadata_props}


@pytest.mark.slow
def test_pytorch2onnx_kw_resnet18_dynamic_batch(tmp_path, capsys):
    """The digits classifier (KW ResNet-18, 1x): exported with a dynamic batch, equal to PyTorch
    in onnxruntime at batches 1 and 3, and no per-sample grouped conv in the graph."""
    needs_onnx()
    model = calibrated(build_model_from_config(DIGITS_CONFIG))
    checkpoint = save_checkpoint(model, tmp_path / 'kw.pth')
    out_path = tmp_path / 'kw1x-r18.onnx'
    code, out, err = run_tool(capsys, DIGITS_CONFIG, checkpoint, out_path, '--shape', 16, 16,
                              '--dynamic-batch', '--verify', '--print-ops')
    assert code == 0, out + err
    errors = verified_errors(out)
    assert set(errors) == {1, 3} and max(errors.values()) <= 1e-4, out
    dims, ops, metadata = onnx_graph(str(out_path))
    assert dims == {'input': ['batch', 3, 16, 16], 'scores': ['batch', 10]}
    # only the static stem is a Conv: every KW conv runs as matmuls, none as a conv whose
    # kernel or groups depend on the batch
    assert ops.count('Conv') == 1 and 'MatMul' in ops
    assert 'MatMul' in out and 'operators (' in out
    assert json.loads(metadata['mmkw.input'])['data_preprocessor']['mean'] == [127.5] * 3


@pytest.mark.slow
@pytest.mark.parametrize('method', ['kwstar', 'odconv', 'dyconv', 'kerneldna'])
def test_pytorch2onnx_every_method(method, tmp_path, capsys, one_thread):
    needs_onnx()
    config = tmp_path / f'{method}.py'
    tiny_config(method).dump(str(config))
    checkpoint = save_checkpoint(tiny_classifier(method), tmp_path / f'{method}.pth')
    out_path = tmp_path / f'{method}.onnx'
    code, out, err = run_tool(capsys, config, checkpoint, out_path, '--shape', 16, 16,
                              '--dynamic-batch', '--verify')
    assert code == 0, out + err
    errors = verified_errors(out)
    assert set(errors) == {1, 3} and max(errors.values()) <= 1e-4, out
    dims, _, _ = onnx_graph(str(out_path))
    assert dims['input'] == ['batch', 3, 16, 16]


def test_pytorch2onnx_torchscript_exporter_static_batch(tmp_path, capsys, one_thread):
    """The legacy exporter, batch fixed at 3: verified on two draws of that batch."""
    needs_onnx('torchscript')
    config = tmp_path / 'kw.py'
    tiny_config('kw').dump(str(config))
    checkpoint = save_checkpoint(tiny_classifier('kw'), tmp_path / 'kw.pth')
    out_path = tmp_path / 'kw.onnx'
    code, out, err = run_tool(capsys, config, checkpoint, out_path, '--shape', 16, 16,
                              '--batch-size', 3, '--exporter', 'torchscript', '--opset', 17,
                              '--verify')
    assert code == 0, out + err
    assert 'verify: batch 3' in out and max(verified_errors(out).values()) <= 1e-4
    import onnx
    assert onnx.load(str(out_path)).opset_import[0].version == 17
    dims, _, _ = onnx_graph(str(out_path))
    assert dims['input'] == [3, 3, 16, 16]


@pytest.mark.slow
def test_pytorch2onnx_detector_backbone(tmp_path, capsys):
    """A detector config exports its backbone with --backbone-only (four feature maps) and is
    refused, with the way out, without it."""
    needs_onnx()
    model = build_model_from_config(DETECTOR_CONFIG)
    calibrated(model.backbone, 64)
    checkpoint = save_checkpoint(model, tmp_path / 'det.pth')
    out_path = tmp_path / 'backbone.onnx'
    code, out, err = run_tool(capsys, DETECTOR_CONFIG, checkpoint, out_path, '--shape', 64, 64)
    assert code == 1 and '--backbone-only' in err and not out_path.exists()
    code, out, err = run_tool(capsys, DETECTOR_CONFIG, checkpoint, out_path, '--shape', 64, 64,
                              '--backbone-only', '--dynamic-batch', '--verify')
    assert code == 0, out + err
    dims, _, _ = onnx_graph(str(out_path))
    assert [dims[f'feat{i}'] for i in range(4)] == [
        ['batch', 64, 16, 16], ['batch', 128, 8, 8], ['batch', 256, 4, 4], ['batch', 512, 2, 2]]
    assert max(verified_errors(out).values()) <= 1e-4


def test_pytorch2onnx_refuses_a_batch_of_one_with_dynamic_batch(tmp_path):
    with pytest.raises(SystemExit):
        load_tool().parse_args([DIGITS_CONFIG, 'x.pth', str(tmp_path / 'x.onnx'),
                                '--dynamic-batch', '--batch-size', '1'])


# ---------------------------------------------------------------- inferencers
@pytest.mark.slow
def test_image_classification_inferencer(tmp_path, one_thread):
    """mmpretrain's inferencer with an mmkw config (custom_imports) and checkpoint: its scores
    are the softmax of the checkpoint's model on the normalised image."""
    from mmpretrain.apis import ImageClassificationInferencer
    model = calibrated(build_model_from_config(DIGITS_CONFIG))
    classes = [f'digit {i}' for i in range(10)]
    checkpoint = save_checkpoint(model, tmp_path / 'kw.pth', classes)
    inferencer = ImageClassificationInferencer(DIGITS_CONFIG, pretrained=checkpoint,
                                               device='cpu')
    rng = np.random.default_rng(0)
    # at the config's 8x8, so that its Resize leaves them as they are
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    results = inferencer(images, batch_size=2)
    assert len(results) == 3
    with torch.no_grad():
        # the config's preprocessing: (pixel - 127.5) / 127.5, channels kept (to_rgb=False)
        x = torch.stack([torch.from_numpy(img).permute(2, 0, 1).float() for img in images])
        expected = model((x - 127.5) / 127.5, mode='tensor').softmax(dim=1)
    for result, probs in zip(results, expected):
        np.testing.assert_allclose(result['pred_scores'], probs.numpy(), rtol=1e-4, atol=1e-6)
        assert result['pred_label'] == int(probs.argmax())
        assert result['pred_class'] == classes[result['pred_label']]


@pytest.mark.slow
def test_det_inferencer(tmp_path, one_thread):
    """mmdet's DetInferencer with the demo detector config (KW ResNet-18 backbone) and a
    checkpoint: the checkpoint's weights are used and the predictions are well formed."""
    from mmdet.apis import DetInferencer
    model = build_model_from_config(DETECTOR_CONFIG)
    classes = ('circle', 'triangle', 'square')
    checkpoint = save_checkpoint(model, tmp_path / 'det.pth', classes)
    inferencer = DetInferencer(DETECTOR_CONFIG, weights=checkpoint, device='cpu',
                               show_progress=False)
    loaded = inferencer.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key].cpu(), value), key
    assert tuple(inferencer.model.dataset_meta['classes']) == classes
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    predictions = inferencer(image, return_datasamples=False)['predictions']
    assert len(predictions) == 1
    prediction = predictions[0]
    count = len(prediction['scores'])
    assert 0 < count <= 20  # the config's rcnn max_per_img
    assert len(prediction['labels']) == len(prediction['bboxes']) == len(prediction['masks'])
    assert all(0 <= label < 3 for label in prediction['labels'])
    assert prediction['scores'] == sorted(prediction['scores'], reverse=True)
