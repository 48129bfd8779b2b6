"""Parameters, FLOPs, latency, throughput, training-step time and peak memory of a config's
model, optionally against a second config in the same process (paper Tables 12 and 16).

    python tools/analysis/benchmark.py CONFIG [--compare BASELINE_CONFIG] [--release-formulation]
        [--batch-size 8] [--shape 224 224] [--repeats 5] [--warmup 2] [--device cpu|cuda]
        [--memory-batch 32] [--measure params flops latency inference train memory]
        [--amp] [--threads N] [--out result.json] [--cfg-options ...]

With ``--compare`` both models are timed interleaved (A, B, A, B, ...) and the ratios of
CONFIG against the baseline are printed: a speed ratio of 0.75x means CONFIG runs at 75% of
the baseline's speed. ``--release-formulation`` also times CONFIG's model with its KW convs
run as the official release runs them, as a reference for mmkw's execution paths. The full
results go to a JSON file (``--out``, by default
``work_dirs/benchmark/<config>[_vs_<baseline>].json``).
"""
import argparse
import json
import os
import os.path as osp
import sys

# The CPU profiler behind the memory measurement logs a CUDA probe error on machines without
# a GPU; it is harmless and would only confuse the report.
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

from mmkw.analysis.benchmark import (MEASUREMENTS, BenchmarkSettings,  # noqa: E402
                                     InReleaseFormulation, format_report, ratios,
                                     run_benchmark)
from mmkw.analysis.models import build_model_from_config  # noqa: E402
from mmkw.engine import keep_freed_cpu_memory  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark the model of a config')
    parser.add_argument('config', help='mmpretrain or mmdet config')
    parser.add_argument('--compare', metavar='BASELINE_CONFIG',
                        help='a second config timed in the same process; ratios are '
                        'CONFIG against it')
    parser.add_argument('--release-formulation', action='store_true',
                        help="also time CONFIG's model (same weights) with every KW conv run as "
                        'the official release does, and print the ratios of mmkw against it')
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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of both configs, as in tools/train.py')
    return parser.parse_args(argv)


def load_model(path: str, options) -> torch.nn.Module:
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {path!r} does not exist')
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    # Weights do not change the timings; loading a pretrained checkpoint would only fail
    # where it cannot be downloaded.
    model_cfg = cfg.model
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None
    return build_model_from_config(cfg)


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
    name = osp.splitext(osp.basename(args.config))[0]
    models = {name: load_model(args.config, args.cfg_options)}
    release = None
    if args.release_formulation:
        release = f'{name} (release formulation)'
        models[release] = InReleaseFormulation(models[name])
    baseline = None
    if args.compare:
        baseline = osp.splitext(osp.basename(args.compare))[0]
        if baseline == name:
            baseline += ' (compare)'
        models[baseline] = load_model(args.compare, args.cfg_options)
    torch.manual_seed(0)
    report = run_benchmark(models, settings, baseline=baseline,
                           progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    if release is not None:
        against_release = ratios(report['models'], release)
        report.setdefault('ratios', {})[f'{name} vs {release}'] = \
            against_release[f'{name} vs {release}']
    report['configs'] = dict(config=args.config, compare=args.compare,
                             release_formulation=args.release_formulation)
    report['environment']['cpu_allocator'] = allocator
    print(format_report(report))
    out = args.out or osp.join(
        'work_dirs', 'benchmark', name + (f'_vs_{baseline}' if baseline else '') + '.json')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'results written to {out}')
    return report


if __name__ == '__main__':
    main()
