"""Which CPU library runs the products of dynamic convs: measured on the machine, not assumed.

torch sends fp32 matmuls to BLAS (MKL) and convolutions to oneDNN, and several products of a
dynamic conv can run as either: the assembly of per-sample kernels (a matmul, or a 1x1
convolution), the per-sample kxk convolution on small maps (im2col and a batched matmul, or one
grouped convolution over the batch) and the warehouse matmul of KW's mixed-input path. Which
library is faster depends on the CPU, not only on its instruction set: on the AVX-512 AMD EPYC
machines measured here oneDNN ran the assembly up to 1.8x faster than MKL's sgemm and a KW
ResNet-18 training step 1.27x faster, while on AVX2 machines the grouped convolution's backward
was pathologically slow on small maps and BLAS won.

Two choices are made together, by timing a probe of KW convs with the shapes that decide them
(:func:`measure_cpu_kernels`, 15-40 s on 2 cores; ``tools/setup_env.sh`` runs it) with each of
the four pairs, for training and for inference apart, once per machine:

- the *path* library (``'blas'`` or ``'onednn'``, see :data:`CPU_KERNELS`): how the
  per-sample convolutions run on small maps and which execution paths KW picks;
- the *matmul* library: whether the assembly and warehouse matmuls run as ``torch.mm`` (BLAS)
  or as oneDNN 1x1 convolutions.

They are chosen as a pair in the network because neither the instruction set nor the matmuls
timed alone tell in training: on a 2-core Intel Xeon with AVX-512 and AMX, oneDNN's 1x1
convolution ran the assembly 2-7x slower than MKL, while on a 2-core AMD EPYC of family 26
(AVX-512) it was 1.4x slower alone, yet the KW ResNet-18 probe trained 1.14x faster with it
between oneDNN's convolutions, and a KW ResNet-18 1.17x faster.

In inference the products run forward only, and a product timed alone tells which library
runs it faster, which depends on its shape: a matmul of at least ``MATMUL_TIMING_MIN_MACS``
takes the other library than the pair's where that one is clearly faster, timed the first time
the shape comes (:func:`matmul_library`). On a 2-core AMD EPYC of family 25 the ResNet-18
probe could not tell the matmul libraries apart in inference (3%) and chose oneDNN, which ran
the 32 x 24 x 590k assembly of a KW ConvNeXt-T's stage-4 pointwise convs 2x slower than BLAS;
with the shapes timed, the network inferred 1.07x faster (interleaved A/B, one process). In
training the same timing (forward and backward) moved nothing in that A/B (1.00x for ConvNeXt-T
and KW 1x ResNet-18), so training keeps the pair's library everywhere.

The results are kept in ``$MMKW_CACHE/cpu_kernels.json`` (default ``~/.cache/mmkw``), keyed by
CPU model, instruction sets (with oneDNN's and MKL's caps), torch version and thread count.
``MMKW_CPU_KERNELS=blas|onednn`` and ``MMKW_MATMUL_KERNELS=blas|onednn`` fix their library (the
other is measured among the pairs left), ``auto`` (the default) measures. Every path is exact
whichever library runs it; only speed depends on the choice.
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

try:  # torch's own way to run ops unseen by the active dispatch modes (FLOP counters)
    from torch.utils._python_dispatch import _disable_current_modes
except ImportError:  # a torch without it: timing a matmul shape is then counted by them
    from contextlib import nullcontext as _disable_current_modes

CPU_KERNELS = ('blas', 'onednn')
ENV_VAR = 'MMKW_CPU_KERNELS'
MATMUL_ENV_VAR = 'MMKW_MATMUL_KERNELS'

logger = logging.getLogger(__name__)

MODES = ('train', 'inference')
# (library of the per-sample paths, library of the matmuls)
Pair = Tuple[str, str]
ALL_PAIRS: Tuple[Pair, ...] = tuple((paths, matmul) for paths in CPU_KERNELS
                                    for matmul in CPU_KERNELS)

# set while a probe times one library: every dynamic conv then runs with it
_forced: Optional[str] = None
_forced_matmul: Optional[str] = None
# the measured (paths, matmul) choice of this process by mode, once known (plain constants
# for torch.compile)
_measured: Optional[Dict[str, Pair]] = None

# inference: the matmul library by (rows, inner, columns, dtype), timed on first use
_inference_matmuls: Dict[Tuple[int, int, int, str], str] = {}
# Smaller matmuls are not timed (they take the measured pair's library): timing them costs
# more than either library could save.
MATMUL_TIMING_MIN_MACS = 2**24
# A shape leaves the measured pair's matmul library only for one this much faster alone: the
# pair was measured in a network, where a library's products can also speed up or slow down the
# convolutions around them, which timing a product alone does not see.
MATMUL_SHAPE_MARGIN = 1.25

# read once: torch fixes its kernels' instruction set at start-up (ATEN_CPU_CAPABILITY caps it)
AVX512_CPU = torch.backends.cpu.get_cpu_capability().startswith('AVX512')

# environment variables that cap the instruction sets of torch's libraries (part of the key)
ISA_CAP_ENV_VARS = ('ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS')


def cpu_kernels() -> str:
    """'blas' or 'onednn' for the per-sample paths: ``$MMKW_CPU_KERNELS`` if set to one of
    them, else the measured choice on this machine for the current mode
    (:func:`measured_choices`): training where autograd records (``torch.is_grad_enabled()``),
    inference elsewhere."""
    if _forced is not None:
        return _forced
    choice = _environment_choice(ENV_VAR)
    return measured_choices()[_mode()][0] if choice == 'auto' else choice


def matmul_kernels() -> str:
    """'blas' (``torch.mm``) or 'onednn' (a 1x1 convolution) for the assembly and warehouse
    matmuls: ``$MMKW_MATMUL_KERNELS`` if set to one of them, else the measured choice on this
    machine for the current mode (:func:`measured_choices`)."""
    if _forced_matmul is not None:
        return _forced_matmul
    choice = _environment_choice(MATMUL_ENV_VAR)
    return measured_choices()[_mode()][1] if choice == 'auto' else choice


def matmul_library(a: torch.Tensor, b: torch.Tensor,
                   products: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
                   ) -> str:
    """The library ('blas' or 'onednn') that runs ``a @ b``, given ``products``, the product
    of two matrices by each library.

    In training, while it is fixed (a probe, ``$MMKW_MATMUL_KERNELS``), while ``torch.compile``
    traces and for products of fewer than ``MATMUL_TIMING_MIN_MACS`` multiply-adds:
    :func:`matmul_kernels`, measured in a network. In inference otherwise, that library unless
    the other ran this shape ``MATMUL_SHAPE_MARGIN`` times faster: both are timed
    (interleaved, median of three after one untimed run) the first time a shape comes in this
    process, out of sight of dispatch modes (FLOP counters must not count the timing). Both are
    exact; only speed depends on the choice.
    """
    if _mode() == 'train' or _forced_matmul is not None or torch.compiler.is_compiling() or \
            _environment_choice(MATMUL_ENV_VAR) != 'auto':
        return matmul_kernels()
    rows, inner = a.shape
    if rows * inner * b.shape[1] < MATMUL_TIMING_MIN_MACS:
        return matmul_kernels()
    key = (rows, inner, b.shape[1], str(a.dtype))
    choice = _inference_matmuls.get(key)
    if choice is None:
        with _disable_current_modes():
            seconds = _time_products(products, a, b)
        choice = measured = matmul_kernels()
        fastest = min(seconds, key=seconds.get)
        if seconds[fastest] * MATMUL_SHAPE_MARGIN < seconds[measured]:
            choice = fastest
        _inference_matmuls[key] = choice
    return choice


def _time_products(products: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
                   a: torch.Tensor, b: torch.Tensor, rounds: int = 3) -> Dict[str, float]:
    seconds = {name: [] for name in products}
    for round_index in range(rounds + 1):
        for name, product in products.items():
            start = time.perf_counter()
            product(a, b)
            if round_index:
                seconds[name].append(time.perf_counter() - start)
    return {name: sorted(times)[rounds // 2] for name, times in seconds.items()}


def inference_matmul_choices() -> Dict[str, str]:
    """The library chosen so far for each timed inference matmul shape,
    ``{'rows x inner x columns dtype': 'blas' | 'onednn'}``."""
    return {f'{rows} x {inner} x {cols} {dtype}': choice
            for (rows, inner, cols, dtype), choice in sorted(_inference_matmuls.items())}


def _mode() -> str:
    return 'train' if torch.is_grad_enabled() else 'inference'


def _environment_choice(variable: str) -> str:
    choice = os.environ.get(variable, 'auto')
    if choice != 'auto' and choice not in CPU_KERNELS:
        raise ValueError(f"{variable} must be 'auto' or one of {CPU_KERNELS}, got {choice!r}")
    return choice


def candidates() -> Tuple[Pair, ...]:
    """The (paths, matmul) pairs the measurement chooses from: all four, less those that
    ``$MMKW_CPU_KERNELS`` or ``$MMKW_MATMUL_KERNELS`` rule out."""
    paths, matmul = _environment_choice(ENV_VAR), _environment_choice(MATMUL_ENV_VAR)
    return tuple(pair for pair in ALL_PAIRS if paths in ('auto', pair[0]) and
                 matmul in ('auto', pair[1]))


def instruction_set_guess() -> str:
    """The choice that the CPU's instruction set suggests: used only while ``torch.compile``
    traces before anything was measured (the probe cannot run inside a trace)."""
    return 'onednn' if AVX512_CPU else 'blas'


def measured_choices() -> Dict[str, Pair]:
    """The fastest (paths, matmul) pair on this machine for each mode, ``{'train': (...),
    'inference': (...)}``, among :func:`candidates`: from the cache file, else measured
    (:func:`measure_cpu_kernels`) and cached."""
    global _measured
    if _measured is not None:
        return _measured
    if torch.compiler.is_compiling():
        guess = instruction_set_guess()
        return dict.fromkeys(MODES, (guess, guess))
    pairs = candidates()
    _measured = _cached_choice(pairs) or _measure_and_cache(pairs)
    return _measured


def _pair_name(pair: Pair) -> str:
    return f'paths {pair[0]}, matmul {pair[1]}'


def _cache_section(pairs: Tuple[Pair, ...]) -> str:
    # a choice made among fewer pairs (a library forced) is kept apart from the full one
    return '; '.join(_pair_name(pair) for pair in pairs)


def _cached_choice(pairs: Tuple[Pair, ...]) -> Optional[Dict[str, Pair]]:
    entry = _read_cache(cache_file()).get(machine_key(), {})
    entry = entry.get(_cache_section(pairs)) if isinstance(entry, dict) else None
    if not isinstance(entry, dict):
        return None
    names = {_pair_name(pair): pair for pair in pairs}
    if all(entry.get(mode) in names for mode in MODES):
        return {mode: names[entry[mode]] for mode in MODES}
    return None


def _measure_and_cache(pairs: Tuple[Pair, ...]) -> Dict[str, Pair]:
    seconds = measure_cpu_kernels(pairs=pairs)
    choice = {mode: min(pairs, key=lambda pair: seconds[mode][_pair_name(pair)])
              for mode in MODES}
    probe = '; '.join(f'{mode}: ' + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in times.items())
                      for mode, times in seconds.items())
    cache = cache_file()
    logger.info('mmkw: CPU kernels %s, measured on this machine (%s); cached in %s',
                {mode: _pair_name(pair) for mode, pair in choice.items()}, probe, cache)
    # read again: another process may have written since
    cached = _read_cache(cache)
    entry = cached.get(machine_key())
    entry = entry if isinstance(entry, dict) else {}
    entry[_cache_section(pairs)] = dict({mode: _pair_name(pair) for mode, pair in choice.items()},
                                        seconds=seconds)
    cached[machine_key()] = entry
    _write_cache(cache, cached)
    return choice


def choices_in_effect() -> Dict[str, object]:
    """What the dynamic convs of this process run with, for reports: the machine
    (:func:`machine_key`), the path and matmul libraries by mode, and the libraries of the
    inference matmuls timed by shape (:func:`inference_matmul_choices`)."""
    paths, matmuls = {}, {}
    for mode in MODES:
        with torch.set_grad_enabled(mode == 'train'):
            paths[mode], matmuls[mode] = cpu_kernels(), matmul_kernels()
    return dict(cpu=machine_key(), cpu_kernels=paths, matmul_kernels=matmuls,
                inference_matmuls_by_shape=inference_matmul_choices())


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


def measure_cpu_kernels(rounds: int = 3, warmup: int = 1,
                        pairs: Optional[Tuple[Pair, ...]] = None
                        ) -> Dict[str, Dict[str, float]]:
    """Seconds of a training step (forward and backward) and of an inference forward of a probe
    with each (paths, matmul) pair of libraries (default: all four): ``{'train': {'paths blas,
    matmul onednn': s, ...}, 'inference': {...}}``, the medians of ``rounds`` interleaved rounds
    after ``warmup`` untimed ones.

    The probe is the last two stages of a KW (1x) ResNet-18, where most of a KW network's time
    goes, at the benchmark's batch (8) and inputs of a 224x224 image: its warehouses' cell counts
    decide which execution paths run (see :func:`~mmkw.ops.per_sample_conv.choose_path`), so a
    probe of other shapes can prefer the wrong library. The two modes are measured apart because
    they can disagree (on an AVX-512 EPYC a KW ResNet-18 inferred 1.18x faster with BLAS paths
    and trained 1.11x faster with oneDNN ones), and the pairs in the network rather than the
    matmuls alone, because a library's matmul can be the faster one alone and the slower one
    between the convolutions (see the module's docstring).
    """
    pairs = pairs or ALL_PAIRS
    # The first conv of a process may run under no_grad or inference_mode, and the user's
    # random stream must not depend on whether this machine had measured before.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        train_step, inference = _probe_runs()
        timings = {(mode, pair): [] for mode in MODES for pair in pairs}
        for round_index in range(warmup + rounds):
            for mode, run in (('train', train_step), ('inference', inference)):
                for pair in pairs:
                    with forced_cpu_kernels(*pair):
                        start = time.perf_counter()
                        run()
                        if round_index >= warmup:
                            timings[mode, pair].append(time.perf_counter() - start)
    return {mode: {_pair_name(pair): sorted(timings[mode, pair])[rounds // 2] for pair in pairs}
            for mode in MODES}


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
