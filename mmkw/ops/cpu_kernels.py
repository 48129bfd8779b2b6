"""Which CPU library runs the products of dynamic convs: measured on the machine, not assumed.

torch sends fp32 matmuls to BLAS (MKL) and convolutions to oneDNN, and several products of a
dynamic conv can run as either: the assembly of per-sample kernels (a matmul, or a 1x1
convolution), the per-sample kxk convolution on small maps (im2col and a batched matmul, or one
grouped convolution over the batch) and the warehouse matmul of KW's mixed-input path. Which
library is faster depends on the CPU, not only on its instruction set: on the AVX-512 AMD EPYC
machines measured here oneDNN ran the assembly up to 1.8x faster than MKL's sgemm and a KW
ResNet-18 training step 1.27x faster, while on AVX2 machines the grouped convolution's backward
was pathologically slow on small maps and BLAS won.

Two choices are made, each by timing both libraries on the machine, for training and for
inference apart, once per machine:

- the *matmul* library (:func:`matmul_kernels`): whether the assembly and warehouse matmuls run
  as ``torch.mm`` (BLAS) or as oneDNN 1x1 convolutions, timed on those matmuls alone
  (:func:`measure_matmul_kernels`, about a second). It is a choice of its own because it can
  go the other way from the rest: on a 2-core Intel Xeon with AVX-512 and AMX, oneDNN's 1x1
  convolution ran the assembly 2-7x slower than MKL, which made a KW ResNet-50 0.8x as fast as
  the release formulation wherever the convolutions preferred oneDNN;
- the *path* library (:func:`cpu_kernels`, ``'blas'`` or ``'onednn'``, see
  :data:`CPU_KERNELS`): how the per-sample convolutions run on small maps and which execution
  paths KW picks, timed on a probe of KW convs with the shapes that decide it
  (:func:`measure_cpu_kernels`, about ten seconds, with the matmul library already chosen).

The results are kept in ``$MMKW_CACHE/cpu_kernels.json`` (default ``~/.cache/mmkw``), keyed by
CPU model, instruction sets, torch version and thread count. ``MMKW_CPU_KERNELS=blas|onednn``
and ``MMKW_MATMUL_KERNELS=blas|onednn`` skip the measurement of their choice, ``auto`` (the
default) uses it. Every path is exact whichever library runs it; only speed depends on the
choice.
"""
import json
import logging
import os
import os.path as osp
import platform
import time
from contextlib import contextmanager
from typing import Callable, ContextManager, Dict, Iterator, Optional, Tuple

import torch

CPU_KERNELS = ('blas', 'onednn')
ENV_VAR = 'MMKW_CPU_KERNELS'
MATMUL_ENV_VAR = 'MMKW_MATMUL_KERNELS'

logger = logging.getLogger(__name__)

# set while a probe times one library: every dynamic conv then runs with it
_forced: Optional[str] = None
_forced_matmul: Optional[str] = None
# the measured choices of this process by mode, once known (plain constants for torch.compile)
_measured: Optional[Dict[str, str]] = None
_measured_matmul: Optional[Dict[str, str]] = None

MODES = ('train', 'inference')

# environment variables that cap the instruction sets of torch's libraries (part of the key)
ISA_CAP_ENV_VARS = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS')


def cpu_kernels() -> str:
    """'blas' or 'onednn': ``$MMKW_CPU_KERNELS`` if set to one of them, else the faster one on
    this machine for the current mode (:func:`measured_cpu_kernels`): training where autograd
    records (``torch.is_grad_enabled()``), inference elsewhere."""
    if _forced is not None:
        return _forced
    choice = _environment_choice(ENV_VAR)
    return measured_cpu_kernels()[_mode()] if choice == 'auto' else choice


def matmul_kernels() -> str:
    """'blas' (``torch.mm``) or 'onednn' (a 1x1 convolution) for the assembly and warehouse
    matmuls: ``$MMKW_MATMUL_KERNELS`` if set to one of them, else the faster one on this machine
    for the current mode (:func:`measured_matmul_kernels`)."""
    if _forced_matmul is not None:
        return _forced_matmul
    choice = _environment_choice(MATMUL_ENV_VAR)
    return measured_matmul_kernels()[_mode()] if choice == 'auto' else choice


def _mode() -> str:
    return 'train' if torch.is_grad_enabled() else 'inference'


def _environment_choice(variable: str) -> str:
    choice = os.environ.get(variable, 'auto')
    if choice != 'auto' and choice not in CPU_KERNELS:
        raise ValueError(f"{variable} must be 'auto' or one of {CPU_KERNELS}, got {choice!r}")
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
    # The paths are timed with the matmul library they will run with; a choice timed with
    # another one (forced, or cached by an older mmkw) is measured again.
    matmul = _matmul_choices()
    _measured = _cached_choice(None, matmul) or \
        _measure_and_cache(None, measure_cpu_kernels, 'CPU kernels', matmul)
    return _measured


def _matmul_choices() -> Dict[str, str]:
    choice = _environment_choice(MATMUL_ENV_VAR)
    return measured_matmul_kernels() if choice == 'auto' else dict.fromkeys(MODES, choice)


def measured_matmul_kernels() -> Dict[str, str]:
    """The faster matmul library on this machine, ``{'train': ..., 'inference': ...}``: from
    the cache file, else measured (:func:`measure_matmul_kernels`) and cached."""
    global _measured_matmul
    if _measured_matmul is not None:
        return _measured_matmul
    if torch.compiler.is_compiling():
        return dict.fromkeys(MODES, instruction_set_guess())
    _measured_matmul = _cached_choice('matmul') or \
        _measure_and_cache('matmul', measure_matmul_kernels, 'matmul kernels')
    return _measured_matmul


def _cached_choice(section: Optional[str],
                   probe_matmul: Optional[Dict[str, str]] = None) -> Optional[Dict[str, str]]:
    entry = _read_cache(cache_file()).get(machine_key(), {})
    if section is not None:
        entry = entry.get(section, {}) if isinstance(entry, dict) else {}
    if isinstance(entry, dict) and all(entry.get(mode) in CPU_KERNELS for mode in MODES) and \
            (probe_matmul is None or entry.get('probe_matmul') == probe_matmul):
        return {mode: entry[mode] for mode in MODES}
    return None


def _measure_and_cache(section: Optional[str], measure: Callable[[], Dict[str, Dict[str, float]]],
                       what: str, probe_matmul: Optional[Dict[str, str]] = None
                       ) -> Dict[str, str]:
    seconds = measure()
    choice = {mode: min(seconds[mode], key=seconds[mode].get) for mode in MODES}
    probe = '; '.join(f'{mode}: ' + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in times.items())
                      for mode, times in seconds.items())
    cache = cache_file()
    logger.info('mmkw: %s %s, measured on this machine (%s); cached in %s', what, choice, probe,
                cache)
    # read again: the other choice may have been written since
    cached = _read_cache(cache)
    entry = cached.get(machine_key())
    entry = entry if isinstance(entry, dict) else {}
    if section is None:
        entry.update(choice, seconds=seconds, probe_matmul=probe_matmul)
    else:
        entry[section] = dict(choice, seconds=seconds)
    cached[machine_key()] = entry
    _write_cache(cache, cached)
    return choice


def choices_in_effect() -> Dict[str, object]:
    """What the dynamic convs of this process run with, for reports: the machine
    (:func:`machine_key`) and the path and matmul libraries by mode."""
    paths, matmuls = {}, {}
    for mode in MODES:
        with torch.set_grad_enabled(mode == 'train'):
            paths[mode], matmuls[mode] = cpu_kernels(), matmul_kernels()
    return dict(cpu=machine_key(), cpu_kernels=paths, matmul_kernels=matmuls)


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
    # oneDNN and MKL read their own instruction-set caps from the environment (the way to run
    # an AVX-512 machine as an AVX2 one), and those change which library is faster
    caps = ''.join(f' | {var}={os.environ[var]}' for var in ISA_CAP_ENV_VARS
                   if os.environ.get(var))
    return (f'{model} | {flags} | torch {torch.__version__} | '
            f'{torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} threads'
            f'{caps}')


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


def forced_cpu_kernels(kernels: Optional[str], matmul: Optional[str] = None):
    """Context manager: every dynamic conv runs its paths with ``kernels`` ('blas' or 'onednn')
    inside, and its matmuls with ``matmul`` where given; ``None`` leaves that choice as it is.
    For the probes and for tests."""
    for name, value in (('kernels', kernels), ('matmul', matmul)):
        if value is not None and value not in CPU_KERNELS:
            raise ValueError(f'{name} must be one of {CPU_KERNELS} or None, got {value!r}')
    return _forcing(kernels, matmul)


@contextmanager
def _forcing(kernels: Optional[str], matmul: Optional[str]) -> Iterator[None]:
    global _forced, _forced_matmul
    previous = _forced, _forced_matmul
    _forced = kernels if kernels is not None else _forced
    _forced_matmul = matmul if matmul is not None else _forced_matmul
    try:
        yield
    finally:
        _forced, _forced_matmul = previous


# The matmuls of the probe: the assembly of a KW ResNet-18's stage-3 and stage-4 3x3 kernels at
# batch 8 (rows: samples x mixtures, inner: warehouse cells, columns: a cell's numbers) and the
# warehouse matmul of its stage-4 mixed-input path (rows: c_out, inner: cells x c_in,
# columns: samples x positions).
MATMUL_PROBE_SHAPES = ((72, 47, 256 * 256), (72, 27, 512 * 512), (512, 27 * 512, 8 * 49))


def measure_matmul_kernels(rounds: int = 3, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """Seconds of the probe's matmuls (:data:`MATMUL_PROBE_SHAPES`) run as
    :func:`~mmkw.ops.per_sample_conv.matmul2d` does with each library, forward and backward
    (``'train'``) and forward alone (``'inference'``): medians of ``rounds`` interleaved rounds
    after ``warmup`` untimed ones, summed over the shapes."""
    from .per_sample_conv import matmul2d

    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        generator = torch.Generator().manual_seed(0)
        operands = [(torch.randn(rows, inner, generator=generator).requires_grad_(),
                     torch.randn(inner, columns, generator=generator).requires_grad_())
                    for rows, inner, columns in MATMUL_PROBE_SHAPES]

        def train_step() -> None:
            with torch.enable_grad():
                for a, b in operands:
                    out = matmul2d(a, b)
                    torch.autograd.grad(out, (a, b), torch.ones_like(out))

        def inference() -> None:
            with torch.no_grad():
                for a, b in operands:
                    matmul2d(a, b)

        return _time_each_library(train_step, inference,
                                  lambda kernels: forced_cpu_kernels(None, matmul=kernels),
                                  rounds, warmup)


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
    # The first conv of a process may run under no_grad or inference_mode, and the user's
    # random stream must not depend on whether this machine had measured before.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        train_step, inference = _probe_runs()
        return _time_each_library(train_step, inference, forced_cpu_kernels, rounds, warmup)


def _time_each_library(train_step: Callable[[], None], inference: Callable[[], None],
                       forcing: Callable[[str], ContextManager], rounds: int,
                       warmup: int) -> Dict[str, Dict[str, float]]:
    """Median seconds of each run with each library forced by ``forcing``, interleaved over
    ``rounds`` rounds after ``warmup`` untimed ones: ``{mode: {library: seconds}}``."""
    timings = {(mode, kernels): [] for mode in MODES for kernels in CPU_KERNELS}
    for round_index in range(warmup + rounds):
        for mode, run in (('train', train_step), ('inference', inference)):
            for kernels in CPU_KERNELS:
                with forcing(kernels):
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
