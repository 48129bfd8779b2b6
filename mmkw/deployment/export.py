"""Export mmkw models to ONNX and check the exported graph against PyTorch.

Every dynamic conv of mmkw exports with a dynamic batch axis: while torch traces or exports a
model, the convs switch to :func:`mmkw.ops.per_sample_conv.export_formulation` by themselves
(the per-sample convolution as ``unfold`` and a batched matmul, the batch in one chunk), which
is exact. The spatial size is fixed at export: each KW conv chooses its execution path by the
size of its feature map.

Exporters (``torch.onnx.export``):

- ``'dynamo'`` (the default, and torch's since 2.9): ``torch.export`` then onnxscript's
  translation and graph optimiser. Needs ``onnxscript``; opset 20 by default. Its graph of a KW
  ResNet-18 has about 630 nodes.
- ``'torchscript'``: the legacy tracing exporter (deprecated since torch 2.9; opset 17 by
  default here, for runtimes that lack opset 20). Needs only ``onnx``; its graph is about five
  times larger (unfolded shape arithmetic and constants), with the same operators.

The inputs of an exported classifier or backbone are the ``[B, C, H, W]`` float images after the
config's ``data_preprocessor`` (mean/std normalisation, channel order): the graph holds the
network only, as mmdeploy's do; the normalisation is written into the model's metadata.
"""
import copy
import os
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

EXPORTERS = ('dynamo', 'torchscript')
# the legacy exporter's opset when none is given (torch's default is 20 for both exporters;
# the legacy one is for runtimes that lack the newer opsets, so it defaults to an older one)
TORCHSCRIPT_DEFAULT_OPSET = 17
INPUT_NAME = 'input'
BATCH_AXIS = 'batch'


class ExportableModel(nn.Module):
    """A tensor-in, tensors-out view of an mmpretrain classifier or of a backbone.

    Args:
        model: an mmpretrain ``ImageClassifier`` (``part='classifier'``), or any model with a
            ``backbone`` or a backbone itself (``part='backbone'``).
        part: 'classifier': ``[B, C, H, W]`` -> class scores ``[B, num_classes]`` (the head's
            logits, before softmax; ``model(x, mode='tensor')``); 'backbone': the backbone's
            feature maps, one output per ``out_indices`` entry.
    """

    PARTS = ('classifier', 'backbone')

    def __init__(self, model: nn.Module, part: str = 'classifier') -> None:
        super().__init__()
        if part not in self.PARTS:
            raise ValueError(f'part must be one of {self.PARTS}, got {part!r}')
        if part == 'classifier':
            if not (hasattr(model, 'extract_feat') and getattr(model, 'with_head', False)):
                raise ValueError(
                    f'{type(model).__name__} is not an mmpretrain classifier with a head: export '
                    'its backbone instead (pytorch2onnx.py --backbone-only), or, for an mmdet '
                    'detector as a whole, use mmdeploy')
        elif hasattr(model, 'backbone'):
            model = model.backbone
        self.part = part
        self.model = model

    def forward(self, inputs: torch.Tensor):
        if self.part == 'classifier':
            return self.model(inputs, mode='tensor')
        outs = self.model(inputs)
        return tuple(outs) if isinstance(outs, (list, tuple)) else outs


def output_names(module: nn.Module, example: torch.Tensor) -> List[str]:
    """Names of the module's outputs: 'scores' for a classifier, 'feat{i}' for feature maps."""
    with torch.no_grad():
        outs = module(example)
    if isinstance(outs, torch.Tensor):
        return ['scores' if getattr(module, 'part', '') == 'classifier' else 'feat0']
    return [f'feat{i}' for i in range(len(outs))]


def export_onnx(module: nn.Module,
                path: str,
                input_shape: Sequence[int],
                dynamic_batch: bool = True,
                opset: Optional[int] = None,
                exporter: str = 'dynamo',
                metadata: Optional[Dict[str, str]] = None) -> List[str]:
    """Export ``module`` (in eval mode, without gradients) to the ONNX file ``path``.

    Args:
        module: tensor in, tensor(s) out (e.g. :class:`ExportableModel`); put in eval mode.
        path: the ``.onnx`` file to write (weights inside it).
        input_shape: the example input ``(B, C, H, W)``; ``B`` of at least 2 when
            ``dynamic_batch`` (``torch.export`` specialises a size of 1).
        dynamic_batch: whether the batch axis of the input and of every output is dynamic
            (``'batch'``); otherwise the graph only takes batches of ``B``.
        opset: the ONNX opset; None: the exporter's default (dynamo: torch's, 20 in 2.14;
            torchscript: ``TORCHSCRIPT_DEFAULT_OPSET``).
        exporter: 'dynamo' or 'torchscript' (see the module docstring).
        metadata: strings to store in the model's ``metadata_props``.

    Returns the output names.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    if len(input_shape) != 4:
        raise ValueError(f'input_shape must be (B, C, H, W), got {tuple(input_shape)}')
    if dynamic_batch and input_shape[0] < 2:
        raise ValueError('export with a dynamic batch needs an example batch of at least 2 '
                         f'(torch.export fixes a size of 1), got {input_shape[0]}')
    require_onnx(exporter)
    module.eval()
    example = torch.randn(*input_shape)
    names = output_names(module, example)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with torch.no_grad():
        if exporter == 'dynamo':
            dynamic_shapes = ({0: torch.export.Dim(BATCH_AXIS)}, ) if dynamic_batch else None
            torch.onnx.export(module, (example, ), path, dynamo=True, input_names=[INPUT_NAME],
                              output_names=names, opset_version=opset,
                              dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
        else:
            dynamic_axes = {name: {0: BATCH_AXIS} for name in [INPUT_NAME] + names} \
                if dynamic_batch else None
            with warnings.catch_warnings():
                # the deprecation of this exporter is documented above; its tracer warnings
                # concern shapes that the export fixes on purpose
                warnings.simplefilter('ignore', DeprecationWarning)
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                torch.onnx.export(module, (example, ), path, dynamo=False,
                                  input_names=[INPUT_NAME], output_names=names,
                                  opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET,
                                  dynamic_axes=dynamic_axes)
    if metadata:
        import onnx
        model = onnx.load(path)
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(model, path)
    return names


def require_onnx(exporter: str = 'dynamo', runtime: bool = False) -> None:
    """Raise an ImportError saying what to install when a package of the export is missing."""
    needed = ['onnx'] + (['onnxscript'] if exporter == 'dynamo' else []) + \
        (['onnxruntime'] if runtime else [])
    missing = []
    for package in needed:
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        hint = " (or --exporter torchscript, which needs only onnx)" \
            if missing == ['onnxscript'] else ''
        raise ImportError(f'ONNX export needs {", ".join(missing)}: pip install -e ".[deploy]" '
                          f'(requirements/deploy.txt){hint}')


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|``: the largest deviation relative to the
    output's scale (elementwise ratios would blow up near zero outputs)."""
    if actual.shape != expected.shape:
        raise ValueError(f'output shapes differ: {actual.shape} vs {expected.shape}')
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    return error / max(scale, 1e-12)


def image_like_inputs(shape: Sequence[int],
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random normalised images ``shape`` = ``(B, C, H, W)``: a standard-normal offset per
    sample and channel plus pixel noise of standard deviation 0.5.

    Unlike i.i.d. noise, whose pooled features are nearly the same for every sample, these
    give each sample its own attentions, which is what a dynamic conv's export must get right.
    """
    batch, channels, height, width = shape
    offsets = torch.randn(batch, channels, 1, 1, generator=generator)
    return offsets + 0.5 * torch.randn(batch, channels, height, width, generator=generator)


def verify_onnx(module: nn.Module,
                path: str,
                input_shape: Sequence[int],
                batch_sizes: Sequence[int],
                tolerance: float = 1e-4,
                seed: int = 0) -> List[Dict[str, float]]:
    """Run the exported model in onnxruntime and ``module`` in PyTorch (its normal execution
    paths, not the export formulation) on the same random inputs, one per batch size.

    Args:
        module: what was exported, in eval mode.
        path: the ONNX file.
        input_shape: ``(B, C, H, W)``; ``B`` is replaced by each of ``batch_sizes``.
        batch_sizes: the batches to run (the exported batch only, unless its axis is dynamic).
        tolerance: the largest :func:`relative_error` accepted, per output.
        seed: seeds the random inputs (:func:`image_like_inputs`).

    Returns one dict per batch size: ``batch``, ``max_abs_error`` and ``max_rel_error`` (the
    largest over the outputs). Raises AssertionError when an error exceeds ``tolerance``.
    """
    require_onnx('torchscript', runtime=True)
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    module.eval()
    results = []
    for batch in batch_sizes:
        x = image_like_inputs((batch, *input_shape[1:]), generator)
        with torch.no_grad():
            expected = module(x)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        if len(actual) != len(expected):
            raise AssertionError(f'{path}: {len(actual)} outputs, PyTorch gives '
                                 f'{len(expected)}')
        for index, out in enumerate(expected):
            if not torch.count_nonzero(out):
                # e.g. an untrained network whose activations vanish with BatchNorm statistics
                # at their initial values: equal zeros would "verify" anything
                raise AssertionError(
                    f'{path}: PyTorch output {index} is all zeros at batch {batch}, so the '
                    'comparison would prove nothing; verify a trained checkpoint (or one whose '
                    'BatchNorm statistics were estimated, see calibrate_batch_norms)')
        rel = max(relative_error(a, e.numpy()) for a, e in zip(actual, expected))
        abs_err = max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected))
        results.append(dict(batch=batch, max_abs_error=abs_err, max_rel_error=rel))
        if not rel <= tolerance:
            raise AssertionError(f'{path}: onnxruntime differs from PyTorch at batch {batch}: '
                                 f'max relative error {rel:.3g} > {tolerance:g}'
                                 + float64_diagnosis(module, x, actual, expected, tolerance))
    return results


def float64_diagnosis(module: nn.Module, x: torch.Tensor, actual: List[np.ndarray],
                      expected: List[torch.Tensor], tolerance: float) -> str:
    """How far onnxruntime's and PyTorch's float32 outputs each are from PyTorch in float64:
    tells an export error from a model whose float32 rounding alone exceeds the tolerance
    (e.g. one with near-zero BatchNorm variances, which amplify rounding)."""
    try:
        reference = copy.deepcopy(module).double().eval()
        with torch.no_grad():
            exact = reference(x.double())
    except Exception as error:  # a module that cannot run in float64: no diagnosis
        return f' (no float64 reference: {error})'
    exact = [exact] if isinstance(exact, torch.Tensor) else list(exact)
    onnx_error = max(relative_error(a.astype(np.float64), e.numpy())
                     for a, e in zip(actual, exact))
    torch_error = max(relative_error(t.double().numpy(), e.numpy())
                      for t, e in zip(expected, exact))
    if onnx_error <= 2 * torch_error:
        verdict = ('onnxruntime is as close to the float64 result as PyTorch is: the model is '
                   'this sensitive to float32 rounding, not wrongly exported')
    elif torch_error > tolerance:
        verdict = ('PyTorch\'s own float32 result is off by more than the tolerance: the model '
                   'is too sensitive to float32 rounding for this check (untrained weights?); '
                   'verify a trained checkpoint')
    else:
        verdict = 'onnxruntime is further from the float64 result than PyTorch: an export error'
    return (f'; against PyTorch in float64: onnxruntime {onnx_error:.3g}, PyTorch float32 '
            f'{torch_error:.3g} ({verdict})')


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``model(inputs)`` in training mode
    (the attentions' too) and return the model in eval mode.

    For checking an untrained model: with the initial statistics (mean 0, variance 1) the
    activations of a deep random network vanish in eval mode (a random KW MobileNetV2 outputs
    exact zeros), which makes any comparison of outputs meaningless.

    ``inputs`` should differ per sample as images do (e.g. a random colour offset per sample
    plus noise): the attentions normalise pooled features, which i.i.d. noise makes nearly equal
    across samples, and statistics estimated from those have near-zero variances that amplify
    float32 rounding a hundredfold.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 1.0  # running statistics := this batch's
    model.train()
    try:
        model(inputs)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return model.eval()


def onnx_op_counts(path: str) -> 'Counter[str]':
    """How many nodes of each operator the graph has (``domain::Op`` outside the default
    domain), local functions' bodies included."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    counts: Counter = Counter()

    def count(nodes) -> None:
        for node in nodes:
            counts[node.op_type if node.domain in ('', 'ai.onnx')
                   else f'{node.domain}::{node.op_type}'] += 1

    count(model.graph.node)
    for function in model.functions:
        count(function.node)
    return counts


def format_op_counts(counts: 'Counter[str]') -> str:
    """Operator counts as ``Op: n`` lines, most frequent first."""
    width = max((len(op) for op in counts), default=0)
    return '\n'.join(f'  {op:<{width}} {n:>5}' for op, n in counts.most_common())


def onnx_input_output_shapes(path: str) -> Tuple[Dict[str, list], Dict[str, list]]:
    """The graph's inputs and outputs: name -> dims (a string for a symbolic dim)."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ({v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output})
