"""KWVisionTransformer: DeiT with KW value/output projections and MLPs (paper §4.3, Table 11),
mmpretrain's ViT interface and state dict for its static parts."""
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmpretrain.models import VisionTransformer, VisionTransformerClsHead

from mmkw.engine import KWTemperatureHook
from mmkw.models.backbones import KWVisionTransformer
from mmkw.ops import KWAttention, KWLinear, get_temperature, set_temperature

REPO = Path(__file__).resolve().parents[2]
SMALL_INPUT = dict(img_size=32, patch_size=16)  # 4 patches + the class token

# Table 11 (params in M, rounded as the paper prints them) and the exact counts of the
# documented layouts with a 1000-class head (docs/kw_vit.md)
TABLE11 = [
    ('deit-tiny', 192, None, None, 5.72, 5_717_416),
    ('deit-tiny', 192, '1x', None, 6.39, 6_387_424),
    ('deit-tiny', 192, '4x', None, 20.44, 20_438_752),
    ('deit-small', 384, None, None, 22.06, 22_050_664),
    ('deit-small', 384, '3/4x', None, 19.23, 19_226_908),
    ('deit-small', 384, '1x', None, 24.36, 24_356_080),
]
KW_ROWS = [row for row in TABLE11 if row[2] is not None]


def count_with_head(backbone, channels):
    head = VisionTransformerClsHead(num_classes=1000, in_channels=channels)
    return sum(p.numel() for p in backbone.parameters()) + \
        sum(p.numel() for p in head.parameters())


@pytest.mark.parametrize('arch,channels,budget,layout,paper,exact', KW_ROWS,
                         ids=lambda v: str(v))
def test_table11_parameter_counts(arch, channels, budget, layout, paper, exact):
    params = count_with_head(KWVisionTransformer(arch, budget=budget, layout=layout), channels)
    assert params == exact
    # as Table 11 prints it, whether it rounds to nearest or up (its DeiT-Small baseline,
    # 22,050,664 parameters, is printed 22.06M)
    assert round(params / 1e6, 2) == paper
    assert math.ceil(params / 1e4) / 100 == paper


@pytest.mark.parametrize('arch,channels,budget,layout,paper,exact',
                         [row for row in TABLE11 if row[2] is None], ids=lambda v: str(v))
def test_table11_baselines(arch, channels, budget, layout, paper, exact):
    params = count_with_head(KWVisionTransformer(arch, budget=budget, layout=layout), channels)
    assert params == exact == count_with_head(VisionTransformer(arch), channels)
    assert math.ceil(params / 1e4) / 100 == paper


def test_layouts_build_the_documented_warehouses():
    summary = KWVisionTransformer('deit-tiny', budget='1x').warehouse_manager.summary()
    assert [(row['name'], row['n'], row['cell_shape'][:2]) for row in summary] == [
        ('layers0-11.value+proj', 24, [192, 192]), ('layers0-3.fc1+fc2', 32, [192, 192]),
        ('layers4-7.fc1+fc2', 32, [192, 192]), ('layers8-11.fc1+fc2', 32, [192, 192])]
    summary = KWVisionTransformer('deit-small', budget='1x').warehouse_manager.summary()
    assert [row['name'] for row in summary] == [
        f'layers{i}-{i + 2}.value+proj+fc1+fc2' for i in (0, 3, 6, 9)]
    summary = KWVisionTransformer('deit-small', budget='3/4x').warehouse_manager.summary()
    assert [(row['n'], row['cell_shape'][:2], row['b']) for row in summary] == [
        (30, [384, 384], 1.0), (30, [384, 384], 1.0), (60, [192, 192], 0.5),
        (60, [192, 192], 0.5)]
    # 3/4 of the plain weights of the four layers, as the budget says
    plain = 12 * (2 * 384 * 384 + 2 * 4 * 384 * 384)
    cells = sum(row['n'] * row['cell_shape'][0] * row['cell_shape'][1] for row in summary)
    assert cells * 4 == plain * 3


def test_query_and_key_stay_static_and_layers_are_kw():
    model = KWVisionTransformer('deit-tiny', budget='1x', **SMALL_INPUT)
    block = model.layers[0]
    assert isinstance(block.attn.qk, torch.nn.Linear) and block.attn.qk.out_features == 2 * 192
    for layer in (block.attn.v, block.attn.proj, block.ffn.layers[0][0], block.ffn.layers[1]):
        assert isinstance(layer, KWLinear)
    # the literal reading (output projection static) also prints as Table 11's DeiT-Tiny KW 1x
    # when rounded to nearest (6,392,092), not when rounded up
    literal = KWVisionTransformer('deit-tiny', budget='1x', layout='value_mlp')
    assert isinstance(literal.layers[0].attn.proj, torch.nn.Linear)
    assert round(count_with_head(literal, 192) / 1e6, 2) == 6.39


@pytest.mark.parametrize('budget,layout', [('1x', None), ('1x', 'value_mlp'), ('3/4x', None)])
def test_plain_deit_state_dict_initialises_the_static_parts(budget, layout):
    torch.manual_seed(0)
    plain = VisionTransformer('deit-small', **SMALL_INPUT).state_dict()
    model = KWVisionTransformer('deit-small', budget=budget, layout=layout, **SMALL_INPUT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = model.load_state_dict(plain, strict=False)
    loaded = model.state_dict()
    channels = 384
    kw_names = {name for name, module in model.named_modules() if isinstance(module, KWLinear)}
    # nothing silently dropped: every plain key either loaded or is reported as unexpected,
    # and the unexpected ones are exactly the weights of the KW layers
    assert set(result.unexpected_keys) == {f'{name}.weight' for name in kw_names}
    for key, value in plain.items():
        if key.endswith('attn.qkv.weight') or key.endswith('attn.qkv.bias'):
            prefix, kind = key.rsplit('.qkv.', 1)
            torch.testing.assert_close(loaded[f'{prefix}.qk.{kind}'], value[:2 * channels])
            if f'{prefix}.v' in kw_names:
                if kind == 'bias':
                    torch.testing.assert_close(loaded[f'{prefix}.v.bias'], value[2 * channels:])
            elif kind == 'weight':
                torch.testing.assert_close(loaded[f'{prefix}.v.weight'], value[2 * channels:])
        elif key not in result.unexpected_keys:
            torch.testing.assert_close(loaded[key], value, msg=key)
    # what was not in the checkpoint: the warehouses and the attentions, untouched
    assert result.missing_keys and all(
        key.startswith('warehouse_manager.') or '.attention.' in key
        for key in result.missing_keys)
    for key in result.missing_keys:
        assert torch.equal(loaded[key], before[key])


@pytest.mark.parametrize('options', [{}, dict(layer_scale_init_value=0.1, drop_path_rate=0.1)])
def test_plain_model_is_mmpretrains_vit(options):
    torch.manual_seed(0)
    reference = VisionTransformer('deit-tiny', out_type='featmap', **SMALL_INPUT, **options)
    model = KWVisionTransformer('deit-tiny', budget=None, out_type='featmap', **SMALL_INPUT,
                                **options)
    model.load_state_dict(reference.state_dict())  # strict: the same names
    reference.eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x))


def test_kw_state_dict_round_trip_and_outputs():
    torch.manual_seed(0)
    model = KWVisionTransformer('deit-tiny', budget='4x', out_indices=(5, 11),
                                out_type='featmap', **SMALL_INPUT)
    clone = KWVisionTransformer('deit-tiny', budget='4x', out_indices=(5, 11),
                                out_type='featmap', **SMALL_INPUT)
    clone.load_state_dict(model.state_dict())  # strict
    model.eval()
    clone.eval()
    x = torch.randn(2, 3, 32, 32)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 192, 2, 2)] * 2
    torch.testing.assert_close(outs, clone(x))
    model.train()
    out = model(x)[-1]
    # weighted: the plain sum of a LayerNorm's output has no gradient to what comes before it
    # but rounding error, which may be exactly zero
    scale = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * scale).sum().backward()
    for weights in model.warehouse_manager.weights:
        assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_temperature_hook_and_fine_tuning_switch():
    pretraining = KWVisionTransformer('deit-tiny', budget='1x', **SMALL_INPUT)
    attentions = [m for m in pretraining.modules() if isinstance(m, KWAttention)]
    assert len(attentions) == 48 and get_temperature(pretraining) == 0.0
    hook = KWTemperatureHook(tau_iters=10)
    hook.total_iters = 10
    assert set_temperature(pretraining, hook.temperature(0)) == 48
    assert all(m.temperature == pytest.approx(0.9) for m in attentions)
    # fine-tuning (A.1.2): the init strategy off, tau held at 0 whatever the hook says
    finetune = KWVisionTransformer('deit-tiny', budget='1x', attention_init=None,
                                   **SMALL_INPUT)
    assert set_temperature(finetune, 0.9) == 0 and get_temperature(finetune) == 0.0
    assert not any(m.init_strategy for m in finetune.modules() if isinstance(m, KWAttention))


def test_frozen_stages_freeze_their_warehouses():
    model = KWVisionTransformer('deit-tiny', budget='1x', frozen_stages=4, **SMALL_INPUT)
    model.train()
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    for block in model.layers[:4]:
        assert not block.training
        assert all(not p.requires_grad and p.grad is None for p in block.parameters())
    assert model.layers[4].training
    frozen = [row['name'] for row, w in zip(model.warehouse_manager.summary(),
                                            model.warehouse_manager.weights)
              if not w.requires_grad]
    # the value/output warehouse is shared with the trainable blocks: frozen as well
    assert frozen == ['layers0-11.value+proj', 'layers0-3.fc1+fc2']
    assert model.layers[4].attn.v.attention.fc2.weight.grad is not None


def test_norm_eval_keeps_attention_norms_in_eval():
    model = KWVisionTransformer('deit-tiny', budget='1x', norm_eval=True, **SMALL_INPUT)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and not any(m.training for m in norms)


def test_init_keeps_kw_attention_init_under_deits_init_cfg():
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(str(REPO / 'configs/kw_deit/kw1x-deit-tiny_4xb256_in1k.py'))
    model = MODELS.build(cfg.model)
    model.init_weights()
    fc2 = model.backbone.layers[3].ffn.layers[1].attention.fc2.weight
    expected = (2 / fc2.shape[0]) ** 0.5  # kaiming fan_out, not TruncNormal std 0.02
    assert abs(fc2.std().item() / expected - 1) < 0.1
    qk = model.backbone.layers[3].attn.qk.weight
    assert abs(qk.std().item() / 0.02 - 1) < 0.1


@pytest.mark.parametrize('scope', ['mmdet', 'mmpretrain'])
def test_builds_from_both_registries(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    backbone = MODELS.build(dict(type='KWVisionTransformer', arch='deit-small', budget='1x',
                                 out_type='featmap', out_indices=(3, 7, 11), img_size=64))
    outs = backbone(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 384, 4, 4)] * 3


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="arch 'deit-femto'"):
        KWVisionTransformer('deit-femto')
    with pytest.raises(ValueError, match='unknown KW ViT layout'):
        KWVisionTransformer('deit-tiny', layout='table12')
    with pytest.raises(ValueError, match='blocks=5 must be a positive divisor'):
        KWVisionTransformer('deit-tiny', layout=dict(
            warehouses=[dict(layers=('fc1', 'fc2'), blocks=5)]))
    with pytest.raises(ValueError, match='already in another warehouse'):
        KWVisionTransformer('deit-tiny', layout=dict(
            warehouses=[dict(layers=('fc1', ), blocks=4), dict(layers=('fc1', 'fc2'))]))
    with pytest.raises(ValueError, match='must be names from'):
        KWVisionTransformer('deit-tiny', layout=dict(warehouses=[dict(layers=('query', ))]))
    with pytest.raises(ValueError, match="budget '3/4x'.*3 groups"):
        KWVisionTransformer('deit-tiny', budget='3/4x', layout=dict(
            warehouses=[dict(layers=('fc1', 'fc2'), blocks=4)]))
    with pytest.raises(ValueError, match='out_indices 12'):
        KWVisionTransformer('deit-tiny', out_indices=(12, ))
    with pytest.raises(ValueError, match='rows: the checkpoint is of another architecture'):
        KWVisionTransformer('deit-tiny', **SMALL_INPUT).load_state_dict(
            VisionTransformer('deit-small', **SMALL_INPUT).state_dict(), strict=False)


def test_custom_group_lengths_and_budgets():
    model = KWVisionTransformer('deit-tiny', budget='1x', layout=dict(
        warehouses=[dict(layers=('fc1', 'fc2'), blocks=(2, 10), budgets=('4x', '1x'))]))
    assert [(row['name'], row['b']) for row in model.warehouse_manager.summary()] == [
        ('layers0-1.fc1+fc2', 4.0), ('layers2-11.fc1+fc2', 1.0)]
    assert isinstance(model.layers[0].attn.qkv, torch.nn.Linear)  # value static: fused qkv


@pytest.mark.slow
def test_kw_deit_config_runs_through_the_runner(digits_root, tmp_path):
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(REPO / 'configs/kw_deit/kw1x-deit-tiny_4xb256_in1k.py'))
    cfg.model.backbone.update(SMALL_INPUT)
    cfg.model.head.num_classes = 10
    cfg.model.pop('train_cfg', None)  # mixup/cutmix need num_classes in the head's loss only
    cfg.data_preprocessor = dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3)
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CustomDataset', data_root=str(digits_root), ann_file='meta/train.txt',
                     data_prefix='train', classes=[str(i) for i in range(10)], indices=8,
                     pipeline=[dict(type='LoadImageFromFile'),
                               dict(type='Resize', scale=(32, 32)),
                               dict(type='PackInputs')]))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=100)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.custom_hooks = [dict(type='KWTemperatureHook', tau_iters=6)]
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 3
    # tau moved 1 -> 0 over 6 iterations: the third iteration ran at tau = 0.5
    assert runner.message_hub.get_scalar('train/tau').current() == pytest.approx(0.5)
    backbone = runner.model.backbone
    assert isinstance(backbone, KWVisionTransformer)
    assert get_temperature(backbone) == pytest.approx(0.5)
    assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar('train/loss').current()))
