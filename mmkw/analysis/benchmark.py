"""Speed and size of models built from configs: what ``tools/analysis/benchmark.py`` measures.

For each model: parameters, FLOPs (mmengine's analyzer, batch 1), latency at batch 1,
inference throughput and training-step time at a chosen batch, and peak training memory.
Timings take a warm-up, then repeated runs reported as median with the spread (min, max and
interquartile range). Several models are timed in one process and *interleaved* (A, B, C, A,
B, C, ...) so that a machine-wide slowdown hits all of them alike and their ratios stay honest;
:func:`ratios` relates every model to a reference one (paper Tables 12 and 16) and
:func:`plot_ratios` draws them.

Any dynamic-conv method is measured alike (the FLOPs of every :class:`~mmkw.ops.DynamicConv2d`
are those of its release's formulation, see :func:`count_flops`). mmdet detectors run their
tensor-mode forward (backbone, neck and heads, no post-processing) through
:class:`DetectorTensorForward`.

Peak training memory is what the tensors of one training step need at their peak: on CUDA
from the caching allocator's statistics, on CPU from the profiler's allocation events (the
process RSS cannot be reset between models and keeps freed memory). Both count parameters,
gradients and optimiser state as well as activations.
"""
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmkw.ops.per_sample_conv import release_formulation


@dataclass
class BenchmarkSettings:
    """What to measure and how.

    Args:
        batch_size: batch of the throughput and training-step measurements.
        shape: input height and width.
        latency_batch: batch of the latency measurement.
        memory_batch: batch of the peak-memory measurement (default: ``batch_size``).
        warmup: untimed runs before each measurement.
        repeats: timed runs (the median is reported).
        device: 'cpu' or 'cuda'.
        amp: run under autocast (bf16 on CPU, fp16 on CUDA).
        measure: any of 'params', 'flops', 'latency', 'inference', 'train', 'memory'.
    """
    batch_size: int = 8
    shape: Tuple[int, int] = (224, 224)
    latency_batch: int = 1
    memory_batch: Optional[int] = None
    warmup: int = 2
    repeats: int = 5
    device: str = 'cpu'
    amp: bool = False
    measure: Sequence[str] = ('params', 'flops', 'latency', 'inference', 'train', 'memory')

    def __post_init__(self) -> None:
        unknown = set(self.measure) - set(MEASUREMENTS)
        if unknown:
            raise ValueError(f'unknown measurement(s) {sorted(unknown)}; choose from '
                             f'{list(MEASUREMENTS)}')
        for name in ('batch_size', 'latency_batch', 'repeats'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')
        if self.warmup < 0:
            raise ValueError(f'warmup must be >= 0, got {self.warmup}')
        if self.device not in ('cpu', 'cuda'):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == 'cuda' and not torch.cuda.is_available():
            raise ValueError('device cuda asked for, but torch sees no CUDA device')


MEASUREMENTS = ('params', 'flops', 'latency', 'inference', 'train', 'memory')


@dataclass
class Timing:
    """Seconds per call over the repeated runs."""
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self, batch: int) -> dict:
        ordered = sorted(self.samples)
        quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
        return dict(median_s=self.median, min_s=ordered[0], max_s=ordered[-1],
                    iqr_s=quartiles[2] - quartiles[0], runs=len(ordered), batch=batch,
                    images_per_s=batch / self.median)


def _synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _autocast(settings: BenchmarkSettings):
    dtype = torch.bfloat16 if settings.device == 'cpu' else torch.float16
    return torch.autocast(settings.device, dtype=dtype, enabled=settings.amp)


def _loss_of(output) -> torch.Tensor:
    """A scalar to backpropagate from a tensor-mode output (logits or nested features)."""
    if isinstance(output, torch.Tensor):
        if output.dim() == 2:  # classification logits: a real loss on random labels
            labels = torch.randint(0, output.shape[1], (output.shape[0],), device=output.device)
            return F.cross_entropy(output.float(), labels)
        return output.float().mean()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        losses = [_loss_of(o) for o in output if o is not None]
        losses = [loss for loss in losses if loss is not None]
        return sum(losses) if losses else None
    return None


class ModelUnderTest:
    """One model and the callables that the benchmark times.

    ``model`` must accept a ``[B, 3, H, W]`` tensor in its ``forward`` (mmpretrain models do
    in their default ``mode='tensor'``; so do backbones); an mmdet detector is wrapped in
    :class:`DetectorTensorForward`.
    """

    def __init__(self, name: str, model: nn.Module, settings: BenchmarkSettings) -> None:
        self.name = name
        self.settings = settings
        self.model = tensor_model(model).to(settings.device)
        # Plain SGD: its update is cheap and the same for every model, so the step time
        # reflects forward and backward.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)

    def inputs(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, *self.settings.shape, device=self.settings.device)

    def inference(self, batch: int) -> Callable[[], None]:
        x = self.inputs(batch)

        def run() -> None:
            self.model.eval()
            with torch.inference_mode(), _autocast(self.settings):
                self.model(x)
        return run

    def train_step(self, batch: int) -> Callable[[], None]:
        x = self.inputs(batch)

        def run() -> None:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(self.settings):
                loss = _loss_of(self.model(x))
            if loss is None:
                raise ValueError(f'{self.name}: the model output has no tensor to '
                                 'backpropagate from')
            loss.backward()
            self.optimizer.step()
        return run


class DetectorTensorForward(nn.Module):
    """An mmdet detector as a module of one tensor ``[B, 3, H, W]``: its ``mode='tensor'``
    forward (backbone, neck and the heads' raw outputs, as mmdet's ``get_flops`` measures it)
    with data samples that describe unpadded ``H x W`` images. The parameters are the
    detector's."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor):
        from mmdet.structures import DetDataSample
        height, width = x.shape[-2:]
        samples = []
        for _ in range(x.shape[0]):
            sample = DetDataSample()
            sample.set_metainfo(dict(img_shape=(height, width), ori_shape=(height, width),
                                     pad_shape=(height, width),
                                     batch_input_shape=(height, width), scale_factor=(1.0, 1.0)))
            samples.append(sample)
        return self.detector(x, samples, mode='tensor')


def is_mmdet_detector(model: nn.Module) -> bool:
    """Whether ``model`` is an mmdet detector (whose forward needs data samples)."""
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:  # mmdet is optional
        return False
    return isinstance(model, BaseDetector)


def tensor_model(model: nn.Module) -> nn.Module:
    """``model`` as a module that takes one image tensor: mmdet detectors wrapped in
    :class:`DetectorTensorForward`, everything else (mmpretrain classifiers, backbones) as is."""
    return DetectorTensorForward(model) if is_mmdet_detector(model) else model


def dynamic_conv_counts(model: nn.Module) -> Dict[str, int]:
    """How many dynamic convs of each layer type ``model`` has (``{}``: a plain network)."""
    from mmkw.ops import DYNAMIC_LAYERS
    counts: Dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, DYNAMIC_LAYERS):
            name = type(module).__name__
            counts[name] = counts.get(name, 0) + 1
    return counts


class InReleaseFormulation(nn.Module):
    """``model`` with every dynamic conv run in its official release's formulation (see
    :func:`mmkw.ops.per_sample_conv.release_formulation`: per-sample kernels assembled for the
    whole batch and applied by one grouped convolution, kept for backward); the parameters are
    ``model``'s."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        with release_formulation():
            return self.model(*args, **kwargs)


def count_parameters(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(params=total, params_m=total / 1e6, trainable=trainable)


def count_flops(model: nn.Module, shape: Tuple[int, int], device: str) -> dict:
    """Multiply-adds of one ``[1, 3, H, W]`` forward pass in eval mode (mmengine's
    FlopAnalyzer counts one multiply-add as one flop).

    The analyzer traces the model. Every dynamic conv (:class:`~mmkw.ops.DynamicConv2d`) runs
    in its release's formulation, as the papers count them: the per-sample kernel assembly (KW's
    Eq. 3, the K-kernel mixtures of ODConv and DY-Conv, counted as their matmuls) and one
    per-sample convolution, whatever path the timed runs take (KW's mixed-input path of small
    maps does more multiply-adds to move less memory). The attentions count through their
    linear layers and 1x1 convs; element-wise scalings (ODConv's channel, filter and spatial
    attentions, CAF) are not multiply-adds to the analyzer.
    """
    with release_flop_analyzer(model, shape, device) as analyzer:
        total = analyzer.total()
        unsupported = dict(analyzer.unsupported_ops())
    return dict(flops=total, gflops=total / 1e9, unsupported_ops=unsupported)


@contextmanager
def release_flop_analyzer(model: nn.Module, shape: Tuple[int, int], device: str = 'cpu'):
    """mmengine's FlopAnalyzer on a ``[1, 3, H, W]`` eval forward with every dynamic conv in
    its release's formulation and the analyser's warnings off (see :func:`count_flops`)."""
    from mmengine.analysis import FlopAnalyzer
    model.eval()
    x = torch.randn(1, 3, *shape, device=device)
    with torch.no_grad(), release_formulation():
        analyzer = FlopAnalyzer(model, (x, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        yield analyzer


def peak_train_memory(unit: ModelUnderTest, batch: int) -> dict:
    """Peak bytes held by tensors during one training step (after one untimed step, so the
    optimiser state exists), parameters included."""
    settings = unit.settings
    step = unit.train_step(batch)
    step()
    resident = sum(t.numel() * t.element_size()
                   for t in list(unit.model.parameters()) + list(unit.model.buffers()))
    resident += sum(s.numel() * s.element_size() for state in unit.optimizer.state.values()
                    for s in state.values() if isinstance(s, torch.Tensor))
    if settings.device == 'cuda':
        unit.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return dict(peak_bytes=peak, peak_mb=peak / 2**20, step_extra_mb=(peak - base) / 2**20,
                    method='torch.cuda.max_memory_allocated')
    from torch.profiler import ProfilerActivity, profile
    unit.optimizer.zero_grad(set_to_none=True)  # gradients are then counted in the step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]')
    live = extra = 0
    for _, nbytes in events:
        live += nbytes
        extra = max(extra, live)
    peak = resident + extra
    return dict(peak_bytes=peak, peak_mb=peak / 2**20, step_extra_mb=extra / 2**20,
                method='profiler allocation events + parameters, buffers, optimizer state')


def _interleaved(calls: Dict[str, Callable[[], None]], settings: BenchmarkSettings,
                 progress: Optional[Callable[[str], None]]) -> Dict[str, Timing]:
    for call in calls.values():
        for _ in range(settings.warmup):
            call()
    timings = {name: Timing() for name in calls}
    for r in range(settings.repeats):
        for name, call in calls.items():
            _synchronize(settings.device)
            start = time.perf_counter()
            call()
            _synchronize(settings.device)
            timings[name].samples.append(time.perf_counter() - start)
        if progress:
            progress(f'run {r + 1}/{settings.repeats}')
    return timings


def run_benchmark(models: Dict[str, nn.Module], settings: BenchmarkSettings,
                  baseline: Optional[str] = None,
                  progress: Optional[Callable[[str], None]] = None) -> dict:
    """Measure every model; timings are interleaved across models.

    Returns ``{'settings': ..., 'environment': ..., 'models': {name: results}}`` and, when a
    ``baseline`` (one of the names) is given, ``'reference'`` (its name) and ``'ratios'`` of
    every other model against it (see :func:`ratios`).
    """
    if baseline is not None and baseline not in models:
        raise ValueError(f'baseline {baseline!r} is not one of the models {list(models)}')
    units = {name: ModelUnderTest(name, model, settings) for name, model in models.items()}
    results: Dict[str, dict] = {name: {} for name in units}
    say = progress or (lambda _: None)
    for name, unit in units.items():
        results[name]['dynamic_convs'] = dynamic_conv_counts(unit.model)
        if 'params' in settings.measure:
            results[name].update(count_parameters(unit.model))
        if 'flops' in settings.measure:
            say(f'{name}: counting FLOPs')
            try:
                results[name].update(count_flops(unit.model, settings.shape, settings.device))
            except Exception as error:  # noqa: BLE001  (the analyzer traces arbitrary models)
                results[name]['flops_error'] = f'{type(error).__name__}: {error}'
    plan = [('latency', 'inference', settings.latency_batch),
            ('inference', 'inference', settings.batch_size),
            ('train', 'train_step', settings.batch_size)]
    for key, method, batch in plan:
        if key not in settings.measure:
            continue
        say(f'timing {key} at batch {batch}')
        calls = {name: getattr(unit, method)(batch) for name, unit in units.items()}
        for name, timing in _interleaved(calls, settings, say).items():
            results[name][key] = timing.summary(batch)
    if 'memory' in settings.measure:
        batch = settings.memory_batch or settings.batch_size
        for name, unit in units.items():
            say(f'{name}: peak training memory at batch {batch}')
            results[name]['memory'] = dict(peak_train_memory(unit, batch), batch=batch)
    report = dict(settings=asdict(settings), environment=environment(settings),
                  models=results)
    if baseline is not None:
        report['reference'] = baseline
        report['ratios'] = ratios(results, baseline)
    return report


def ratios(results: Dict[str, dict], baseline: str) -> Dict[str, dict]:
    """Every model against the baseline: speed as (baseline's time / its time), so 0.75
    means 75% of the baseline's speed; params, FLOPs and memory as (its value / baseline's)."""
    reference = results[baseline]
    out = {}
    for name in results:
        if name == baseline:
            continue
        row = {}
        current = results[name]
        for key in ('latency', 'inference', 'train'):
            if key in current and key in reference:
                row[f'{key}_speed'] = reference[key]['median_s'] / current[key]['median_s']
        for key, sub in (('params', None), ('flops', None), ('memory', 'peak_bytes')):
            a = reference.get(key) if sub is None else reference.get(key, {}).get(sub)
            b = current.get(key) if sub is None else current.get(key, {}).get(sub)
            if a and b is not None:
                row[f'{key}_ratio'] = b / a
        out[f'{name} vs {baseline}'] = row
    return out


def environment(settings: BenchmarkSettings) -> dict:
    import platform
    env = dict(torch=torch.__version__, python=platform.python_version(),
               threads=torch.get_num_threads(), machine=platform.machine(),
               processor=platform.processor() or None)
    if settings.device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
    return env


def format_report(report: dict) -> str:
    """The on-screen table: one row per model, then the ratios."""
    lines = []
    width = max([44] + [len(name) for name in report['models']])
    latency = f"lat b{report['settings']['latency_batch']} ms"
    header = (f"{'model':<{width}} {'params':>8} {'GFLOPs':>7} {latency:>11} "
              f"{'infer img/s':>11} {'train img/s':>11} {'peak MiB':>9}")
    lines += [header, '-' * len(header)]

    def timing(result: dict, key: str, scale: float, per_image: bool) -> str:
        if key not in result:
            return '-'
        t = result[key]
        value = t['images_per_s'] if per_image else t['median_s'] * scale
        spread = (t['iqr_s'] / t['median_s']) * 100
        return f'{value:.1f}±{spread:.0f}%' if spread >= 0.5 else f'{value:.1f}'

    for name, result in report['models'].items():
        params = f"{result['params_m']:.2f}M" if 'params_m' in result else '-'
        flops = f"{result['gflops']:.2f}" if 'gflops' in result else '-'
        memory = f"{result['memory']['peak_mb']:.0f}" if 'memory' in result else '-'
        lines.append(f'{name:<{width}} {params:>8} {flops:>7} '
                     f"{timing(result, 'latency', 1e3, False):>11} "
                     f"{timing(result, 'inference', 1, True):>11} "
                     f"{timing(result, 'train', 1, True):>11} {memory:>9}")
    for pair, row in report.get('ratios', {}).items():
        lines.append('')
        lines.append(f'{pair}: ' + ', '.join(f'{k} {v:.3f}x' for k, v in row.items()))
    if len(report.get('ratios', {})) > 1:
        lines.append('')
        lines.append(format_ratio_table(report))
    lines.append('')
    lines.append('± is the interquartile range of the timed runs, relative to the median.')
    return '\n'.join(lines)


# the ratios of :func:`ratios` in table and plot order, with their labels
RATIO_COLUMNS = (('params_ratio', 'params'), ('flops_ratio', 'FLOPs'),
                 ('latency_speed', 'latency speed'), ('inference_speed', 'inference speed'),
                 ('train_speed', 'training speed'), ('memory_ratio', 'peak memory'))


def _pair_label(pair: str, reference: Optional[str]) -> str:
    """A ratio's label: the model's name when it is against the reference, else the pair."""
    name, against = pair.rsplit(' vs ', 1)
    return name if against == reference else pair


def _ratio_columns(report: dict) -> List[Tuple[str, str]]:
    present = {key for row in report.get('ratios', {}).values() for key in row}
    return [(key, label) for key, label in RATIO_COLUMNS if key in present]


def format_ratio_table(report: dict, markdown: bool = False) -> str:
    """The ratios of every compared pair as one table (speeds: > 1 is faster than the
    reference; params, FLOPs, memory: > 1 is more). ``markdown`` gives a Markdown table with the
    absolute numbers of each model beside its ratios, as in the README."""
    columns = _ratio_columns(report)
    pairs = report.get('ratios', {})
    if not markdown:
        width = max(len(pair) for pair in pairs)
        header = f"{'ratios':<{width}} " + ' '.join(f'{label:>15}' for _, label in columns)
        lines = [header, '-' * len(header)]
        for pair, row in pairs.items():
            cells = [f'{row[key]:.3f}x' if key in row else '-' for key, _ in columns]
            lines.append(f'{pair:<{width}} ' + ' '.join(f'{c:>15}' for c in cells))
        return '\n'.join(lines)
    models = report['models']
    lines = ['| model | ' + ' | '.join(label for _, label in columns) + ' |',
             '| --- |' + ' --- |' * len(columns)]

    def absolute(result: dict, key: str) -> str:
        if key == 'params_ratio' and 'params_m' in result:
            return f"{result['params_m']:.2f}M"
        if key == 'flops_ratio' and 'gflops' in result:
            return f"{result['gflops']:.2f}G"
        if key == 'memory_ratio' and 'memory' in result:
            return f"{result['memory']['peak_mb']:.0f} MiB"
        timing = key.replace('_speed', '')
        if timing in result:
            if timing == 'latency':
                return f"{result[timing]['median_s'] * 1e3:.1f} ms"
            return f"{result[timing]['images_per_s']:.1f} img/s"
        return '-'

    reference = report.get('reference')
    if reference in models:
        lines.append(f'| {reference} (reference) | ' +
                     ' | '.join(absolute(models[reference], key) for key, _ in columns) + ' |')
    for pair, row in pairs.items():
        result = models.get(pair.rsplit(' vs ', 1)[0], {})
        cells = [f'{absolute(result, key)} ({row[key]:.2f}x)' if key in row else '-'
                 for key, _ in columns]
        lines.append(f'| {_pair_label(pair, reference)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_ratios(report: dict, path: str, title: Optional[str] = None) -> None:
    """A PNG bar chart of the ratios: one group of bars per measure (params, FLOPs, latency,
    inference and training speed, peak memory), one bar per compared pair, a line at 1 (the
    reference). Drawn with matplotlib's Agg backend (no display needed)."""
    pairs = report.get('ratios', {})
    if not pairs:
        raise ValueError('no ratios to plot: give at least two configs (ratios are to the '
                         'first) or --release-formulation')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    columns = _ratio_columns(report)
    reference = report.get('reference')
    positions = np.arange(len(columns))
    width = 0.8 / len(pairs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) + 0.3 * len(pairs)), 4.5),
                           dpi=100)
    for i, (pair, row) in enumerate(pairs.items()):
        values = [row.get(key, np.nan) for key, _ in columns]
        bars = ax.bar(positions - 0.4 + (i + 0.5) * width, values, width,
                      label=_pair_label(pair, reference))
        for bar, value in zip(bars, values):
            if np.isfinite(value):
                ax.annotate(f'{value:.2f}', (bar.get_x() + bar.get_width() / 2, value),
                            ha='center', va='bottom', fontsize=7)
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.set_xticks(positions)
    ax.set_xticklabels([label.replace(' ', '\n') for _, label in columns], fontsize=8)
    ax.set_ylabel('ratio (speed: > 1 is faster)')
    settings = report.get('settings', {})
    against = f'against {reference}, ' if reference else ''
    ax.set_title(title or f"{against}batch {settings.get('batch_size')}, "
                 f"{'x'.join(str(s) for s in settings.get('shape', ()))} input, "
                 f"{settings.get('device', '')}", fontsize=9)
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.15))
    fig.savefig(path, bbox_inches='tight')
    plt.close(fig)
