"""Where a backbone's time goes, stage by stage, against where its multiply-adds are.

A dynamic conv costs more than its multiply-adds suggest when it is bound by memory (KW's
kernel assembly writes ``B x params`` numbers through a matmul of inner size ``n``). To find
those stages, :func:`profile_stages` runs the backbone once to record every top-level child
(stem parts, stages, final convs) with the input it receives, then times each child alone on
that input, interleaved over repeats (inference: forward under ``inference_mode``; training:
forward and backward of the child's output), and takes each child's multiply-adds from
mmengine's analyser in the release formulation (as :func:`~mmkw.analysis.benchmark.count_flops`
counts them). :func:`compare_stages` relates a dynamic backbone to a plain one stage by stage:
time ratio against multiply-add ratio, the gap being what an implementation can still win.
"""
import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from mmkw.analysis.benchmark import release_flop_analyzer
from mmkw.ops.per_sample_conv import release_formulation


@dataclass
class StageCost:
    """One top-level child of a backbone: multiply-adds of a ``[1, 3, H, W]`` forward and the
    median seconds of a forward (``inference``) and of a forward plus backward (``train``) at
    the profiled batch size."""
    name: str
    macs: int
    inference: float
    train: float


def backbone_of(model: nn.Module) -> nn.Module:
    return getattr(model, 'backbone', model)


def _recorded_calls(backbone: nn.Module, x: torch.Tensor) -> List[Tuple[str, nn.Module, tuple]]:
    calls, handles = [], []
    for name, child in backbone.named_children():
        def hook(module, args, name=name):
            calls.append((name, module, tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                              for a in args)))
        handles.append(child.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            backbone(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _stage_macs(backbone: nn.Module, shape: Tuple[int, int]) -> Dict[str, int]:
    with release_flop_analyzer(backbone, shape) as analyzer:
        return dict(analyzer.by_module())


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def profile_stages(model: nn.Module, batch_size: int = 8, shape: Tuple[int, int] = (224, 224),
                   repeats: int = 5, warmup: int = 1, release: bool = False) -> List[StageCost]:
    """Costs of the top-level children of ``model``'s backbone (or of ``model``), in the order
    the forward pass calls them. A child called more than once is timed on its first input.
    ``release``: time the dynamic convs in their release's formulation
    (:func:`~mmkw.ops.per_sample_conv.release_formulation`)."""
    backbone = backbone_of(model)
    macs = _stage_macs(backbone, shape)
    backbone.eval()
    calls = _recorded_calls(backbone, torch.randn(batch_size, 3, *shape))
    seen, stages = set(), []
    for name, module, args in calls:
        if name not in seen:
            seen.add(name)
            stages.append((name, module, args))

    formulation = release_formulation if release else contextlib.nullcontext

    def inference(module, args):
        def run():
            module.eval()
            with torch.inference_mode(), formulation():
                module(*args)
        return run

    def train(module, args):
        inputs = tuple(a.clone().requires_grad_(a.is_floating_point()) if
                       isinstance(a, torch.Tensor) else a for a in args)

        def run():
            module.train()
            # a copy per run: in-place children (ReLU) may not modify a leaf that needs grad
            args = tuple(a.clone() if isinstance(a, torch.Tensor) and a.requires_grad else a
                         for a in inputs)
            with formulation():
                out = _first_tensor(module(*args))
                if out is not None and out.requires_grad:
                    out.backward(torch.ones_like(out))
            module.zero_grad(set_to_none=True)
        return run

    runs = {(name, kind): make(module, args) for name, module, args in stages
            for kind, make in (('inference', inference), ('train', train))}
    times = {key: [] for key in runs}
    for round_index in range(warmup + repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            if round_index >= warmup:
                times[key].append(time.perf_counter() - start)
    backbone.eval()
    return [StageCost(name, int(macs.get(name, 0)), statistics.median(times[name, 'inference']),
                      statistics.median(times[name, 'train'])) for name, _, _ in stages]


def compare_stages(model: Sequence[StageCost], baseline: Sequence[StageCost]) -> List[dict]:
    """Per stage of ``model`` (matched by name with ``baseline``): its share of the model's
    multiply-adds and time, and its time and multiply-add ratios to the baseline's stage; the
    last row is the whole backbone. The speed a stage could reach if it ran at the baseline's
    multiply-adds per second is ``baseline time x MAC ratio``."""
    base = {stage.name: stage for stage in baseline}
    total = StageCost('total', sum(s.macs for s in model), sum(s.inference for s in model),
                      sum(s.train for s in model))
    base_total = StageCost('total', sum(s.macs for s in baseline),
                           sum(s.inference for s in baseline), sum(s.train for s in baseline))
    rows = []
    for stage in list(model) + [total]:
        ref = base_total if stage is total else base.get(stage.name)
        row = dict(stage=stage.name, gmacs=stage.macs / 1e9,
                   mac_share=stage.macs / max(total.macs, 1),
                   inference_ms=stage.inference * 1e3, train_ms=stage.train * 1e3,
                   inference_share=stage.inference / total.inference,
                   train_share=stage.train / total.train)
        if ref is not None and ref.macs:
            row.update(mac_ratio=stage.macs / ref.macs,
                       inference_ratio=stage.inference / ref.inference,
                       train_ratio=stage.train / ref.train)
        rows.append(row)
    return rows


def format_stage_table(rows: List[dict], markdown: bool = False) -> str:
    """The rows of :func:`compare_stages` as a text or Markdown table. The ratios are slowdowns
    against the baseline's stage (time ratio) next to the multiply-add ratio that bounds them."""
    columns = [('stage', 'stage', '{}'), ('gmacs', 'GMACs', '{:.3f}'),
               ('mac_share', 'MAC share', '{:.0%}'),
               ('inference_ms', 'infer ms', '{:.1f}'), ('inference_share', 'infer share', '{:.0%}'),
               ('train_ms', 'train ms', '{:.1f}'), ('train_share', 'train share', '{:.0%}'),
               ('mac_ratio', 'MACs / base', '{:.2f}x'),
               ('inference_ratio', 'infer time / base', '{:.2f}x'),
               ('train_ratio', 'train time / base', '{:.2f}x')]

    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else '-'

    table = [[title for _, title, _ in columns]]
    table += [[cell(row, key, fmt) for key, _, fmt in columns] for row in rows]
    if markdown:
        lines = ['| ' + ' | '.join(table[0]) + ' |', '|' + ' --- |' * len(columns)]
        lines += ['| ' + ' | '.join(r) + ' |' for r in table[1:]]
        return '\n'.join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return '\n'.join('  '.join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in table)
