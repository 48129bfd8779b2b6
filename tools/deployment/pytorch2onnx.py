"""Export the model of an mmpretrain config (or the backbone of any config) to ONNX.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W]
        [--dynamic-batch] [--verify] [--opset N] [--exporter {dynamo,torchscript}]
        [--backbone-only] [--print-ops] [--batch-size B] [--cfg-options ...]

Works for every method of mmkw (KW, KW*, ODConv, DY-Conv, KernelDNA, plain networks): their
dynamic convs export in an exact formulation whose graph takes any batch size
(:func:`mmkw.ops.per_sample_conv.export_formulation`). ``--verify`` runs the exported graph in
onnxruntime on random inputs of two batch sizes and compares it with the PyTorch model (max
relative error, ``max |onnx - torch| / max |torch|``, at most ``--tolerance``, 1e-4); the exit
status is 1 when it does not hold. The graph's inputs are images after the config's
``data_preprocessor`` (printed, and stored in the model's metadata). Needs the ``deploy`` extra
(``pip install -e ".[deploy]"``). See ``docs/deployment.md``.
"""
import argparse
import json
import os.path as osp
import sys
import time
from typing import List, Optional

from mmengine.config import DictAction

from mmkw.analysis.models import build_model_from_config, load_config
from mmkw.deployment import (EXPORTERS, ExportableModel, export_onnx, format_op_counts,
                             onnx_input_output_shapes, onnx_op_counts, require_onnx,
                             verify_onnx)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmpretrain config (mmdet configs: --backbone-only)')
    parser.add_argument('checkpoint', help='the checkpoint to export (loaded strictly)')
    parser.add_argument('out', help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                        help='input height and width, fixed in the graph (default 224 224)')
    parser.add_argument('--batch-size', type=int, default=2,
                        help='batch of the example input (the only one accepted without '
                        '--dynamic-batch; at least 2 with it); default 2')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='make the batch axis of the input and outputs dynamic')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch on random inputs of two batch '
                        'sizes (1 and batch + 1 with --dynamic-batch, else two draws of the '
                        'exported batch)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest max relative error --verify accepts (default 1e-4)')
    parser.add_argument('--opset', type=int, default=None,
                        help='ONNX opset (default: the exporter\'s, 20 for dynamo, 17 for '
                        'torchscript)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help='torch.onnx.export(dynamo=True) (default; needs onnxscript) or the '
                        'legacy TorchScript exporter')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the backbone (its out_indices feature maps) instead of the '
                        'whole classifier; the way to export a detector\'s backbone')
    parser.add_argument('--print-ops', action='store_true',
                        help='print the operators of the exported graph and their counts')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, as tools/train.py')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be positive, got {args.batch_size}')
    if args.dynamic_batch and args.batch_size < 2:
        parser.error('--dynamic-batch needs --batch-size of at least 2 (torch.export fixes a '
                     'size of 1)')
    if min(args.shape) < 1:
        parser.error(f'--shape must be positive, got {args.shape}')
    return args


def preprocessing(cfg) -> dict:
    """What the graph's input is expected to have gone through: the config's
    data_preprocessor (mean, std, channel order)."""
    pre = cfg.get('data_preprocessor') or cfg.model.get('data_preprocessor') or {}
    keep = ('type', 'mean', 'std', 'to_rgb', 'bgr_to_rgb', 'rgb_to_bgr')
    return {k: pre[k] for k in keep if k in pre}


def input_channels(cfg) -> int:
    backbone = cfg.model.get('backbone') or {}
    return int(backbone.get('in_channels', 3))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        require_onnx(args.exporter, runtime=args.verify)
    except ImportError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    cfg = load_config(args.config, args.cfg_options)
    model = build_model_from_config(cfg, checkpoint=args.checkpoint).eval()
    part = 'backbone' if args.backbone_only else 'classifier'
    try:
        module = ExportableModel(model, part).eval()
    except ValueError as error:
        print(f'error: {args.config}: {error}', file=sys.stderr)
        return 1
    shape = (args.batch_size, input_channels(cfg), *args.shape)
    pre = preprocessing(cfg)
    metadata = {
        'mmkw.config': osp.basename(args.config),
        'mmkw.checkpoint': osp.basename(args.checkpoint),
        'mmkw.part': part,
        'mmkw.input': json.dumps(dict(shape=['batch' if args.dynamic_batch else shape[0],
                                             *shape[1:]], data_preprocessor=pre)),
    }
    start = time.time()
    export_onnx(module, args.out, shape, args.dynamic_batch, args.opset, args.exporter,
                metadata)
    inputs, outputs = onnx_input_output_shapes(args.out)
    print(f'wrote {args.out} ({args.exporter} exporter, {time.time() - start:.1f} s)')
    print(f'  inputs:  {inputs}, images after the data_preprocessor {pre}')
    print(f'  outputs: {outputs}' + (' (class scores before softmax)' if part == 'classifier'
                                     else ''))
    if args.print_ops:
        counts = onnx_op_counts(args.out)
        print(f'operators ({sum(counts.values())} nodes, {len(counts)} types):')
        print(format_op_counts(counts))
    if args.verify:
        batches = [1, args.batch_size + 1] if args.dynamic_batch else \
            [args.batch_size, args.batch_size]
        try:
            results = verify_onnx(module, args.out, shape, batches, args.tolerance)
        except AssertionError as error:
            print(f'verify FAILED: {error}', file=sys.stderr)
            return 1
        for row in results:
            print(f"verify: batch {row['batch']}: max relative error "
                  f"{row['max_rel_error']:.2e} (max abs {row['max_abs_error']:.2e}) <= "
                  f'{args.tolerance:g}')
        print('verify: ok')
    return 0


if __name__ == '__main__':
    sys.exit(main())
