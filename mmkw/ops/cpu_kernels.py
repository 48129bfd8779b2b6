"""Which CPU library runs the products of dynamic convs: measured on the machine, not assumed.

torch sends fp32 matmuls to BLAS (MKL) and convolutions to oneDNN, and several products of a
dynamic conv can run as either: the assembly of per-sample kernels (a matmul, or a 1x1
convolution), the per-sample kxk convolution on small maps (im2col and a batched matmul, or one
grouped convolution over the batch) and the warehouse matmul of KW's mixed-input path. Which
library is faster depends on the CPU, not only on its instruction set: on the AVX-512 AMD EPYC
machines measured here oneDNN ran the assembly up to 1.8x faster than MKL's sgemm and a KW
ResNet-18 training step 1.27x faster, while on AVX2 machines the grouped convolution's backward
was pathologically slow on small maps and BLAS won.

So the choice (``'blas'`` or ``'onednn'``, see :data:`CPU_KERNELS`) is made by timing both on
a probe of KW convs with the shapes that decide it (:func:`measure_cpu_kernels`, about ten
seconds), for training and for inference apart, once per machine: the result is kept in
``$MMKW_CACHE/cpu_kernels.json`` (default ``~/.cache/mmkw``), keyed by CPU model, instruction
sets, torch version and thread count.
``MMKW_CPU_KERNELS=blas|onednn`` skips the measurement, ``auto`` (the default) uses it.
Every path is exact whichever library runs it; only speed depends on the choice.
"""
import json
import logging
import os
import os.path as osp
import platform
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

CPU_KERNELS = ('blas', 'onednn')
ENV_VAR = 'MMKW_CPU_KERNELS'

logger = logging.getLogger(__name__)

# set while the probe times one library: every dynamic conv then runs with it
_forced: Optional[str] = None
# the measured choices of this process by mode, once known (plain constants for torch.compile)
_measured: Optional[Dict[str, str]] = None

MODES = ('train', 'inference')


def cpu_kernels() -> str:
    """'blas' or 'onednn': ``$MMKW_CPU_KERNELS`` if set to one of them, else the faster one on
    this machine for the current mode (:func:`measured_cpu_kernels`): training where autograd
    records (``torch.is_grad_enabled()``), inference elsewhere."""
    if _forced is not None:
        return _forced
    choice = os.environ.get(ENV_VAR, 'auto')
    if choice == 'auto':
        return measured_cpu_kernels()['train' if torch.is_grad_enabled() else 'inference']
    if choice not in CPU_KERNELS:
        raise ValueError(f"{ENV_VAR} must be 'auto' or one of {CPU_KERNELS}, got {choice!r}")
    return choice


def instruction_set_guess() -> str:
    """The choice that the CPU's instruction set suggests: used only while ``torch.compile``
    traces before anything was measured (the probe cannot run inside a trace)."""
    return 'onednn' if torch.backends.cpu.get_cpu_capability().startswith('AVX512') else 'blas'


def measured_cpu_kernels() -> Dict[str, str]:
    """The faster library on this machine, ``{'train': ..., 'inference': ...}``: from the cache
    file, else measured and cached."""
    global _measured
    if _measured is not None:
        return _measured
    if torch.compiler.is_compiling():
        return dict.fromkeys(MODES, instruction_set_guess())
    key = machine_key()
    cache = cache_file()
    cached = _read_cache(cache)
    entry = cached.get(key, {})
    if isinstance(entry, dict) and all(entry.get(mode) in CPU_KERNELS for mode in MODES):
        _measured = {mode: entry[mode] for mode in MODES}
        return _measured
    seconds = measure_cpu_kernels()
    _measured = {mode: min(seconds[mode], key=seconds[mode].get) for mode in MODES}
    probe = '; '.join(f'{mode}: ' + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in times.items())
                      for mode, times in seconds.items())
    logger.info('mmkw: CPU kernels %s, measured on this machine (%s); cached in %s', _measured,
                probe, cache)
    cached[key] = dict(_measured, seconds=seconds)
    _write_cache(cache, cached)
    return _measured


def machine_key() -> str:
    """What the measured choice depends on: CPU model and instruction sets, torch, threads."""
    model, flags = platform.processor() or platform.machine(), ''
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                name, _, value = line.partition(':')
                if name.strip() == 'model name':
                    model = value.strip()
                elif name.strip() == 'flags':
                    flags = ' '.join(sorted(
                        flag for flag in value.split()
                        if flag.startswith(('avx', 'amx', 'fma', 'f16c'))))
                    break
    except OSError:
        pass
    return (f'{model} | {flags} | torch {torch.__version__} | '
            f'{torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} threads')


def cache_file() -> str:
    root = os.environ.get('MMKW_CACHE', osp.join(osp.expanduser('~'), '.cache', 'mmkw'))
    return osp.join(root, 'cpu_kernels.json')


def _read_cache(path: str) -> Dict[str, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: str, data: Dict[str, dict]) -> None:
    # a read-only home only costs the next process another measurement
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
        temporary = f'{path}.{os.getpid()}'
        with open(temporary, 'w') as f:
            json.dump(data, f, indent=1)
        os.replace(temporary, path)
    except OSError as error:
        logger.warning('mmkw: could not cache the CPU kernel choice in %s: %s', path, error)


def forced_cpu_kernels(kernels: Optional[str]):
    """Context manager: every dynamic conv runs with ``kernels`` ('blas' or 'onednn') inside;
    ``None`` restores the normal choice. For the probe and for tests."""
    if kernels is not None and kernels not in CPU_KERNELS:
        raise ValueError(f'kernels must be one of {CPU_KERNELS} or None, got {kernels!r}')
    return _forcing(kernels)


@contextmanager
def _forcing(kernels: Optional[str]) -> Iterator[None]:
    global _forced
    previous, _forced = _forced, kernels
    try:
        yield
    finally:
        _forced = previous


def measure_cpu_kernels(rounds: int = 3, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """Seconds of a training step (forward and backward) and of an inference forward of a probe
    with each library: ``{'train': {'blas': s, 'onednn': s}, 'inference': {...}}``, the medians
    of ``rounds`` interleaved rounds after ``warmup`` untimed ones.

    The probe is the last two stages of a KW (1x) ResNet-18, where most of a KW network's time
    goes, at the benchmark's batch (8) and inputs of a 224x224 image: its warehouses' cell counts
    decide which execution paths run (see :func:`~mmkw.ops.per_sample_conv.choose_path`), so a
    probe of other shapes can prefer the wrong library. The two modes are measured apart because
    they can disagree: on an AVX-512 EPYC a KW ResNet-18 inferred 1.18x faster with BLAS and
    trained 1.11x faster with oneDNN.
    """
    timings = {(mode, kernels): [] for mode in MODES for kernels in CPU_KERNELS}
    # The first conv of a process may run under no_grad or inference_mode, and the user's
    # random stream must not depend on whether this machine had measured before.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        train_step, inference = _probe_runs()
        for round_index in range(warmup + rounds):
            for mode, run in (('train', train_step), ('inference', inference)):
                for kernels in CPU_KERNELS:
                    with forced_cpu_kernels(kernels):
                        start = time.perf_counter()
                        run()
                        if round_index >= warmup:
                            timings[mode, kernels].append(time.perf_counter() - start)
    return {mode: {kernels: sorted(timings[mode, kernels])[rounds // 2]
                   for kernels in CPU_KERNELS} for mode in MODES}


def _probe_runs() -> Tuple[Callable[[], None], Callable[[], None]]:
    # the real stages; imported here because the backbones import the ops
    from mmkw.models.backbones.resnet import KWResNet

    torch.manual_seed(0)
    backbone = KWResNet(depth=18, budget='1x')
    stages = torch.nn.Sequential(backbone.layer3, backbone.layer4)
    # an input that needs gradients, as everywhere in a network but at its first layer
    x = torch.randn(8, 128, 28, 28).requires_grad_()

    def train_step() -> None:
        stages.train()
        stages(x).sum().backward()
        stages.zero_grad(set_to_none=True)
        x.grad = None

    def inference() -> None:
        stages.eval()
        with torch.inference_mode():
            stages(x)

    return train_step, inference
