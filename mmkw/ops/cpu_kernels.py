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
a probe of KW convs with the shapes that decide it (:func:`measure_cpu_kernels`, about a
second), once per machine: the result is kept in ``$MMKW_CACHE/cpu_kernels.json`` (default
``~/.cache/mmkw``), keyed by CPU model, instruction sets, torch version and thread count.
``MMKW_CPU_KERNELS=blas|onednn`` skips the measurement, ``auto`` (the default) uses it.
Every path is exact whichever library runs it; only speed depends on the choice.
"""
import json
import logging
import os
import os.path as osp
import platform
import time
from typing import Callable, Dict, Optional

import torch

CPU_KERNELS = ('blas', 'onednn')
ENV_VAR = 'MMKW_CPU_KERNELS'

logger = logging.getLogger(__name__)

# set while the probe times one library: every dynamic conv then runs with it
_forced: Optional[str] = None
# the measured choice of this process, once known (a plain constant for torch.compile)
_measured: Optional[str] = None


def cpu_kernels() -> str:
    """'blas' or 'onednn': ``$MMKW_CPU_KERNELS`` if set to one of them, else the faster one on
    this machine (:func:`measured_cpu_kernels`)."""
    if _forced is not None:
        return _forced
    choice = os.environ.get(ENV_VAR, 'auto')
    if choice == 'auto':
        return measured_cpu_kernels()
    if choice not in CPU_KERNELS:
        raise ValueError(f"{ENV_VAR} must be 'auto' or one of {CPU_KERNELS}, got {choice!r}")
    return choice


def instruction_set_guess() -> str:
    """The choice that the CPU's instruction set suggests: used only while ``torch.compile``
    traces before anything was measured (the probe cannot run inside a trace)."""
    return 'onednn' if torch.backends.cpu.get_cpu_capability().startswith('AVX512') else 'blas'


def measured_cpu_kernels() -> str:
    """The faster library on this machine: from the cache file, else measured and cached."""
    global _measured
    if _measured is not None:
        return _measured
    if torch.compiler.is_compiling():
        return instruction_set_guess()
    key = machine_key()
    cache = cache_file()
    cached = _read_cache(cache)
    if key in cached and cached[key].get('choice') in CPU_KERNELS:
        _measured = cached[key]['choice']
        return _measured
    seconds = measure_cpu_kernels()
    _measured = min(seconds, key=seconds.get)
    logger.info('mmkw: %s runs dynamic convs faster on this CPU (probe: %s); cached in %s',
                _measured, ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in seconds.items()),
                cache)
    cached[key] = dict(choice=_measured, seconds=seconds)
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
    return _Forced(kernels)


class _Forced:

    def __init__(self, kernels: Optional[str]) -> None:
        if kernels is not None and kernels not in CPU_KERNELS:
            raise ValueError(f'kernels must be one of {CPU_KERNELS} or None, got {kernels!r}')
        self.kernels = kernels

    def __enter__(self) -> None:
        global _forced
        self.previous, _forced = _forced, self.kernels

    def __exit__(self, *exc) -> None:
        global _forced
        _forced = self.previous


def measure_cpu_kernels(rounds: int = 3) -> Dict[str, float]:
    """Seconds of a training step (forward and backward) of a probe of KW convs with each
    library, the median of ``rounds`` interleaved rounds after a warm-up.

    The probe holds the shapes on which the libraries differ, at the batch size of the
    benchmark (8): a 3x3 conv on a 14x14 map (kernels assembled by a matmul or a 1x1 conv, then
    a per-sample conv by im2col or by a grouped conv), a 3x3 conv on a 7x7 map (mixed input:
    the warehouse matmul) and a 1x1 conv on a 14x14 map (MobileNetV2). Depthwise convs run
    alike with both.
    """
    step = _probe_step()
    timings = {kernels: [] for kernels in CPU_KERNELS}
    for round_index in range(rounds + 1):
        for kernels in CPU_KERNELS:
            with forced_cpu_kernels(kernels):
                start = time.perf_counter()
                step()
                if round_index:  # round 0 warms up
                    timings[kernels].append(time.perf_counter() - start)
    return {kernels: sorted(times)[len(times) // 2] for kernels, times in timings.items()}


def _probe_step() -> Callable[[], None]:
    from .kw_conv import KWConv2d  # the probe runs the real layers
    from .warehouse import WarehouseManager

    class Probe(torch.nn.Module):

        def __init__(self) -> None:
            super().__init__()
            self.warehouse_manager = WarehouseManager('1x', recompute_kernels=False)
            self.dense = KWConv2d(128, 128, 3, padding=1, warehouse_manager=self.warehouse_manager,
                                  warehouse_name='dense')
            self.small_map = KWConv2d(256, 256, 3, padding=1,
                                      warehouse_manager=self.warehouse_manager,
                                      warehouse_name='small_map')
            self.pointwise = KWConv2d(192, 64, 1, warehouse_manager=self.warehouse_manager,
                                      warehouse_name='pointwise')
            self.warehouse_manager.build(self)

    generator = torch.Generator().manual_seed(0)
    probe = Probe()
    inputs = [(probe.dense, torch.randn(8, 128, 14, 14, generator=generator)),
              (probe.small_map, torch.randn(8, 256, 7, 7, generator=generator)),
              (probe.pointwise, torch.randn(8, 192, 14, 14, generator=generator))]

    def step() -> None:
        for conv, x in inputs:
            conv(x).sum().backward()

    return step
