"""Parameters, FLOPs, latency, throughput, training-step time and peak memory of the models of
one or more configs, side by side in one process (paper Tables 12 and 16).

    python tools/analysis/benchmark.py CONFIG [CONFIG ...] [--compare BASELINE_CONFIG]
        [--release-formulation] [--fold-static-kernels] [--batch-size 8] [--shape 224 224]
        [--repeats 5] [--warmup 2]
        [--device cpu|cuda] [--memory-batch 32]
        [--measure params flops latency inference train memory] [--amp] [--threads N]
        [--out result.json] [--plot ratios.png] [--markdown] [--cfg-options ...]

All models are timed interleaved (A, B, C, A, B, C, ...) and every model is related to a
reference: the first CONFIG, or BASELINE_CONFIG with ``--compare`` (the form
``CONFIG --compare BASELINE`` prints CONFIG against BASELINE). A speed ratio of 0.75x means a
model runs at 75% of the reference's speed; params, FLOPs and memory ratios are model /
reference. ``--release-formulation`` also times each model that has dynamic convs with them
run as the official releases run them (same weights), as a reference for mmkw's execution
paths; ``--fold-static-kernels`` times each KernelDNA model also with its children's static
kernels folded (deploy folding, inference only). The full results go to a JSON file
(``--out``, by default under
``work_dirs/benchmark/``); ``--plot`` draws the ratios as grouped bars (PNG) and
``--markdown`` prints them as a Markdown table. mmpretrain and mmdet configs both work
(detectors run their tensor-mode forward: backbone, neck and heads).

Example (the README's table, ResNet-18: plain, DY-Conv 4x, ODConv 4x, KW 1x, KW 4x)::

    python tools/analysis/benchmark.py configs/kw_resnet/resnet18_8xb32_in1k.py \\
        configs/dyconv/dyconv4x-resnet18_8xb32_in1k.py \\
        configs/odconv/odconv4x-resnet18_8xb32_in1k.py \\
        configs/kw_resnet/kw1x-resnet18_8xb32_in1k.py \\
        configs/kw_resnet/kw4x-resnet18_8xb32_in1k.py \\
        --memory-batch 32 --repeats 7 --plot work_dirs/benchmark/resnet18.png --markdown
"""
import argparse
import copy
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

# The CPU profiler behind the memory measurement logs a CUDA probe error on machines without
# a GPU; it is harmless and would only confuse the report.
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmkw.analysis.benchmark import (MEASUREMENTS, BenchmarkSettings,  # noqa: E402
                                     InReleaseFormulation, dynamic_conv_counts, format_report,
                                     format_ratio_table, plot_ratios, ratios, run_benchmark,
                                     tensor_model)
from mmkw.analysis.models import build_model_from_config  # noqa: E402
from mmkw.engine import keep_freed_cpu_memory  # noqa: E402
from mmkw.ops import cpu_kernels as ck  # noqa: E402
from mmkw.ops import fold_static_kernels  # noqa: E402

RELEASE_SUFFIX = ' (release formulation)'
FOLDED_SUFFIX = ' (folded)'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Benchmark the models of configs side by side (ratios to the first)')
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='mmpretrain or mmdet configs; ratios are to the first')
    parser.add_argument('--compare', metavar='BASELINE_CONFIG',
                        help='a reference config timed in the same process; ratios are every '
                        'CONFIG against it')
    parser.add_argument('--release-formulation', action='store_true',
                        help="also time each model with dynamic convs (same weights) with "
                        'every dynamic conv run as the official releases do, and print the '
                        'ratios of mmkw against it')
    parser.add_argument('--fold-static-kernels', action='store_true',
                        help="also time each KernelDNA model with its children's static "
                        'kernels folded for inference (deploy folding; inference measures '
                        'only), and print the ratios of the folded model against it')
    parser.add_argument('--batch-size', type=int, default=8,
                        help='batch of the throughput and training-step timings')
    parser.add_argument('--latency-batch', type=int, default=1)
    parser.add_argument('--memory-batch', type=int,
                        help='batch of the peak training memory (default: --batch-size)')
    parser.add_argument('--shape', type=int, nargs='+', default=[224],
                        help='input size: H [W]')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true',
                        help='autocast: bf16 on CPU, fp16 on CUDA')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--default-allocator', action='store_true',
                        help='leave glibc malloc as it is instead of keeping freed memory, as '
                        'tools/train.py does')
    parser.add_argument('--measure', nargs='+', choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument('--out', help='JSON file for the results')
    parser.add_argument('--plot', metavar='PNG',
                        help='draw the ratios to the reference as grouped bars to this PNG')
    parser.add_argument('--markdown', action='store_true',
                        help='also print the ratios as a Markdown table')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every config, as in tools/train.py')
    return parser.parse_args(argv)


def config_name(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def unique_name(name: str, taken: Dict[str, object], label: Optional[str] = None) -> str:
    """``name``, or ``name (label)``, ``name (2)``, ... when a model of that name exists."""
    if name not in taken:
        return name
    candidates = ([f'{name} ({label})'] if label else []) + \
        [f'{name} ({n})' for n in range(2, len(taken) + 3)]
    return next(c for c in candidates if c not in taken)


def load_models(args: argparse.Namespace) -> Tuple[Dict[str, torch.nn.Module], Dict[str, str],
                                                   Optional[str], List[Tuple[str, str]]]:
    """The models to time, in order, with their config paths, the reference's name and the
    (model, release-formulation twin) pairs."""
    models: Dict[str, torch.nn.Module] = {}
    paths: Dict[str, str] = {}
    twins: List[Tuple[str, str]] = []
    for path in args.configs:
        # weights do not change the timings: the models are built without init_cfg loading
        model = build_model_from_config(path, args.cfg_options)
        name = unique_name(config_name(path), models)
        models[name] = model
        paths[name] = path
        if args.release_formulation:
            if dynamic_conv_counts(model):
                twin = name + RELEASE_SUFFIX
                models[twin] = InReleaseFormulation(tensor_model(model))
                paths[twin] = path
                twins.append((name, twin))
            else:
                print(f'{name}: no dynamic convs, so no release formulation to time',
                      file=sys.stderr)
        if args.fold_static_kernels:
            folded = copy.deepcopy(model).eval()
            if fold_static_kernels(folded):
                twin = name + FOLDED_SUFFIX
                models[twin] = folded
                paths[twin] = path
                # the folded model against the model as it trains: folded / unfolded speed
                twins.append((twin, name))
            else:
                print(f'{name}: no KernelDNA children, so nothing to fold', file=sys.stderr)
    reference = None
    if args.compare:
        reference = unique_name(config_name(args.compare), models, 'compare')
        models[reference] = build_model_from_config(args.compare, args.cfg_options)
        paths[reference] = args.compare
    elif len(args.configs) > 1:
        reference = config_name(args.configs[0])
    return models, paths, reference, twins


def default_out(names: List[str], reference: Optional[str], compare: bool) -> str:
    if compare:
        stem = f'{names[0]}_vs_{reference}'
    elif len(names) > 1:
        stem = '_'.join(names)
        if len(stem) > 200:
            stem = f'{names[0]}_and_{len(names) - 1}_more'
    else:
        stem = names[0]
    return osp.join('work_dirs', 'benchmark', stem + '.json')


def main(argv=None) -> dict:
    args = parse_args(argv)
    if len(args.shape) not in (1, 2):
        raise SystemExit(f'--shape takes H or H W, got {args.shape}')
    shape = (args.shape[0], args.shape[-1])
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = 'glibc default'
    if not args.default_allocator and keep_freed_cpu_memory():
        allocator = 'glibc, freed memory kept (mmkw.engine.keep_freed_cpu_memory)'

    settings = BenchmarkSettings(batch_size=args.batch_size, shape=shape,
                                 latency_batch=args.latency_batch,
                                 memory_batch=args.memory_batch, warmup=args.warmup,
                                 repeats=args.repeats, device=args.device, amp=args.amp,
                                 measure=tuple(args.measure))
    if args.fold_static_kernels and {'train', 'memory'} & set(args.measure):
        raise SystemExit('--fold-static-kernels times inference: folded KernelDNA children do '
                         'not train, so give --measure without train and memory (e.g. '
                         '--measure params flops latency inference)')
    models, paths, reference, twins = load_models(args)
    if args.plot and reference is None and not twins:
        raise SystemExit('--plot draws ratios: give two or more configs, --compare, '
                         '--release-formulation or --fold-static-kernels')
    torch.manual_seed(0)
    report = run_benchmark(models, settings, baseline=reference,
                           progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    for name, twin in twins:
        report.setdefault('ratios', {})[f'{name} vs {twin}'] = \
            ratios(report['models'], twin)[f'{name} vs {twin}']
    for name, result in report['models'].items():
        result['config'] = paths[name]
    report['configs'] = dict(config=args.configs[0], configs=list(args.configs),
                             compare=args.compare, reference=reference,
                             release_formulation=args.release_formulation,
                             fold_static_kernels=args.fold_static_kernels)
    report['environment']['cpu_allocator'] = allocator
    if settings.device == 'cpu':
        report['environment'].update(ck.choices_in_effect())
        print(f"CPU: {report['environment']['cpu']}; kernels (paths / matmuls): " + ', '.join(
            f"{mode} {report['environment']['cpu_kernels'][mode]} / "
            f"{report['environment']['matmul_kernels'][mode]}" for mode in ck.MODES),
            file=sys.stderr)
    print(format_report(report))
    if args.markdown and report.get('ratios'):
        print()
        print(format_ratio_table(report, markdown=True))
    names = [config_name(path) for path in args.configs]
    out = args.out or default_out(names, reference, bool(args.compare))
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'results written to {out}')
    if args.plot:
        os.makedirs(osp.dirname(osp.abspath(args.plot)), exist_ok=True)
        plot_ratios(report, args.plot)
        print(f'ratios drawn to {args.plot}')
    return report


if __name__ == '__main__':
    main()
