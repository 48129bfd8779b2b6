"""Speed and size of models built from configs: what ``tools/analysis/benchmark.py`` measures.

For each model: parameters, FLOPs (mmengine's analyzer, batch 1), latency at batch 1,
inference throughput and training-step time at a chosen batch, and peak training memory.
Timings take a warm-up, then repeated runs reported as median with the spread (min, max and
interquartile range). Several models are timed in one process and *interleaved* (A, B, A, B,
...) so that a machine-wide slowdown hits all of them alike and their ratios stay honest.

Peak training memory is what the tensors of one training step need at their peak: on CUDA
from the caching allocator's statistics, on CPU from the profiler's allocation events (the
process RSS cannot be reset between models and keeps freed memory). Both count parameters,
gradients and optimiser state as well as activations.
"""
import statistics
import time
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

    ``model`` must accept a ``[B, 3, H, W]`` tensor in its ``forward`` (mmpretrain and mmdet
    models do in their default ``mode='tensor'``; so do backbones).
    """

    def __init__(self, name: str, model: nn.Module, settings: BenchmarkSettings) -> None:
        self.name = name
        self.settings = settings
        self.model = model.to(settings.device)
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


class InReleaseFormulation(nn.Module):
    """``model`` with every KW conv run in the official release's formulation (see
    :func:`mmkw.ops.per_sample_conv.release_formulation`); the parameters are ``model``'s."""

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

    The analyzer traces the model. KW layers run as the paper counts them, the per-sample
    kernel assembly (Eq. 3) and the per-sample convolution (the release's formulation),
    whatever path the timed runs take (the mixed-input path of small maps does more
    multiply-adds to move less memory).
    """
    from mmengine.analysis import FlopAnalyzer
    model.eval()
    x = torch.randn(1, 3, *shape, device=device)
    with torch.no_grad(), release_formulation():
        analyzer = FlopAnalyzer(model, (x, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        total = analyzer.total()
        unsupported = dict(analyzer.unsupported_ops())
    return dict(flops=total, gflops=total / 1e9, unsupported_ops=unsupported)


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
    ``baseline`` (one of the names) is given, ``'ratios'`` of every other model against it.
    """
    if baseline is not None and baseline not in models:
        raise ValueError(f'baseline {baseline!r} is not one of the models {list(models)}')
    units = {name: ModelUnderTest(name, model, settings) for name, model in models.items()}
    results: Dict[str, dict] = {name: {} for name in units}
    say = progress or (lambda _: None)
    for name, unit in units.items():
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
    lines.append('')
    lines.append('± is the interquartile range of the timed runs, relative to the median.')
    return '\n'.join(lines)
