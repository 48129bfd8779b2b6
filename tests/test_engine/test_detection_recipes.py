"""The paper's Mask R-CNN 1x configs (Table 3) train with the official release's recipe
(OSVAI/KernelWarehouse, ``detection/configs/kernelwarehouse/*``, mmdet 2.x), written with mmdet
3.x's transforms and optimizer constructors; docs/detection_recipes.md lists the items.

- the rows share one recipe and differ only in the backbone;
- the DETR-style train pipeline runs on a generated image with masks and reaches both policies;
- every parameter's learning rate and weight decay are the release's, found by applying the
  release's rules to the release's own parameter names and shapes (the official layout of
  ``tests/test_tools/official_kw_layout.py``, renamed by the checkpoint converter);
- ConvNeXt's layer-wise lr decay gives named parameters the release's rates;
- no trainable parameter is left without a gradient (DDP without ``find_unused_parameters``),
  also for images whose objects were all cropped away, and a 2-process CPU run confirms it.
"""
import copy
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mmkw  # noqa: F401  (registers the backbones and the optimizer constructor)
from mmkw.converters.official import DETECTION_CONFIGS, Target, rename_official
from mmkw.engine.optimizers import convnext_layer_id

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tests' / 'test_tools'))
from official_kw_layout import BUFFERS, released_layout  # noqa: E402

# the paper's rows: the release's eight configs and the paper-only KW (3/4x) ConvNeXt-Tiny
CONFIGS = sorted(REPO / c for c in {
    *DETECTION_CONFIGS.values(), 'configs/mask_rcnn/mask-rcnn_kw0.75x-convnext-t_fpn_1x_coco.py'})
CONVNEXT = [c for c in CONFIGS if 'convnext' in c.name]
DEMO = REPO / 'configs' / 'mask_rcnn' / 'mask-rcnn_kw1x-r18-slim_fpn_shapes.py'

# the release's recipe values (mask_rcnn_*_adamw_1x_coco.py and the mmdet 2.x bases they use)
DETR_SHORT_SIDES = list(range(480, 801, 32))
BASE_LR, WEIGHT_DECAY, DECAY_RATE, NUM_LAYERS = 1e-4, 0.05, 0.95, 6
# frozen_stages=1 of the release's detection backbones: conv1 + bn1 + layer1 of ResNet,
# features[0..3] of MobileNetV2 (stage_idx[1] = 3)
RELEASE_FROZEN = {'resnet50': ('conv1.', 'bn1.', 'layer1.'),
                  'mobilenetv2_100': tuple(f'features.{i}.' for i in range(4)),
                  'convnext_tiny': ()}


def load(config: Path) -> Config:
    return Config.fromfile(str(config))


def build_detector(cfg: Config) -> torch.nn.Module:
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no ImageNet checkpoint here
    model = MODELS.build(model_cfg)
    model.train()
    return model


# ----------------------------------------------------------------------------- one recipe
def recipe_part(cfg: Config) -> dict:
    """The config without what a row may choose: its backbone and the neck's input widths."""
    part = copy.deepcopy(cfg.to_dict())
    part['model'].pop('backbone')
    part['model']['neck'].pop('in_channels')
    return part


def test_rows_share_one_recipe_and_differ_only_in_the_backbone():
    assert len(CONFIGS) == 9 and len(CONVNEXT) == 3, [c.name for c in CONFIGS]
    parts = {c.name: recipe_part(load(c)) for c in CONFIGS}
    plain = [parts[c.name] for c in CONFIGS if c not in CONVNEXT]
    assert all(p == plain[0] for p in plain)
    convnext = {c.name: parts[c.name] for c in CONVNEXT}
    baseline = convnext.pop('mask-rcnn_convnext-t_fpn_adamw-1x_coco.py')
    for name, part in convnext.items():
        # the KW rows add the layer-scale key only (the release's KW ConvNeXt decays it)
        keys = part['optim_wrapper']['paramwise_cfg'].pop('custom_keys')
        assert keys == {'.gamma': dict(decay_mult=1.0)}, name
        assert part == baseline, name
    # the ConvNeXt recipe differs from the others in the optimizer and the lr steps only
    for key in ('optim_wrapper', 'param_scheduler'):
        assert baseline.pop(key) != plain[0][key]
    rest = {k: v for k, v in plain[0].items() if k not in ('optim_wrapper', 'param_scheduler')}
    assert baseline == rest


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: c.stem)
def test_recipe_values_are_the_releases(config):
    cfg = load(config)
    convnext = config in CONVNEXT
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == \
        ('AdamW', BASE_LR, (0.9, 0.999), WEIGHT_DECAY)
    paramwise = cfg.optim_wrapper.paramwise_cfg
    if convnext:
        assert cfg.optim_wrapper.constructor == 'ConvNeXtLayerDecayOptimWrapperConstructor'
        assert (paramwise.num_layers, paramwise.decay_rate, paramwise.decay_type) == \
            (NUM_LAYERS, DECAY_RATE, 'layer_wise')
        backbone = cfg.model.backbone
        assert (backbone.drop_path_rate, backbone.layer_scale_init_value) == (0.4, 1.0)
    else:
        assert 'constructor' not in cfg.optim_wrapper
        assert paramwise.custom_keys == {'norm': dict(decay_mult=0.)}
        assert 'norm_decay_mult' not in paramwise and 'bias_decay_mult' not in paramwise
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch, warmup.end) == \
        ('LinearLR', 0.001, False, 500)
    assert steps.type == 'MultiStepLR' and steps.by_epoch and steps.gamma == 0.1
    assert steps.milestones == ([9, 11] if convnext else [8, 11])
    assert cfg.train_cfg.max_epochs == 12 and cfg.train_dataloader.batch_size == 2
    assert not cfg.get('find_unused_parameters', False)


# ----------------------------------------------------------------------------- pipeline
IMG_H, IMG_W = 427, 640  # a COCO-like landscape image
# (label, colour in BGR, box x1, y1, x2, y2): a large object and a small one in a corner that
# crops often cut away
OBJECTS = [(0, (0, 0, 255), 100, 120, 300, 320), (1, (0, 255, 0), 8, 8, 56, 48)]


def write_sample(directory: Path, objects=OBJECTS) -> dict:
    """An image with filled rectangles and their annotations, as CocoDataset hands them to the
    pipeline (polygon masks)."""
    img = np.full((IMG_H, IMG_W, 3), 40, np.uint8)
    instances = []
    for label, colour, x1, y1, x2, y2 in objects:
        img[y1:y2, x1:x2] = colour
        instances.append(dict(bbox=[x1, y1, x2, y2], bbox_label=label, ignore_flag=0,
                              mask=[[x1, y1, x2, y1, x2, y2, x1, y2]]))
    path = directory / f'sample_{len(objects)}.png'
    cv2.imwrite(str(path), img)
    return dict(img_path=str(path), img_id=0, height=IMG_H, width=IMG_W, instances=instances)


def build_pipeline(transforms: List[dict]) -> Tuple[Compose, object]:
    """The pipeline and its RandomChoice, whose picks are recorded in ``choice.picks``."""
    init_default_scope('mmdet')
    pipeline = Compose(copy.deepcopy(transforms))
    choice = next(t for t in pipeline.transforms if type(t).__name__ == 'RandomChoice')
    choice.picks = []
    pick = choice.random_pipeline_index

    def record() -> int:
        index = pick()
        choice.picks.append(int(index))
        return index

    choice.random_pipeline_index = record
    return pipeline, choice


def check_instances(packed: dict) -> List[int]:
    """Masks, boxes and image agree for every object; returns the labels left."""
    image = packed['inputs'].permute(1, 2, 0).numpy()
    instances = packed['data_samples'].gt_instances
    masks = instances.masks
    assert (masks.height, masks.width) == image.shape[:2]
    labels = instances.labels.tolist()
    for mask, box, label in zip(masks.masks, instances.bboxes.tensor.numpy(), labels):
        ys, xs = np.nonzero(mask)
        assert len(xs), 'an instance without mask pixels'
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        # a pixel of rasterisation at the original size grows to up to 3 after the resizes
        assert np.abs(extent - box).max() <= 4, (extent, box)
        colour = image[mask.astype(bool)].mean(0)
        expected = np.array(OBJECTS[label][1], float)
        assert np.abs(colour - expected).max() < 40, (label, colour)  # mask over its object
    return labels


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: c.stem)
def test_train_pipeline_runs_both_policies(config, tmp_path):
    cfg = load(config)
    pipeline, choice = build_pipeline(cfg.train_dataloader.dataset.pipeline)
    sample = write_sample(tmp_path)
    ratios, lost_small, flips = [], 0, set()
    for seed in range(24):
        np.random.seed(seed)
        random.seed(seed)
        packed = pipeline(copy.deepcopy(sample))
        assert packed is not None
        policy = choice.picks[-1]
        height, width = packed['inputs'].shape[1:]
        assert min(height, width) in DETR_SHORT_SIDES and max(height, width) <= 1333
        flips.add(packed['data_samples'].flip)
        labels = check_instances(packed)
        if policy == 0:  # resize only: aspect ratio and objects kept
            assert abs(width / height - IMG_W / IMG_H) < 0.01
            assert sorted(labels) == [0, 1]
        else:
            ratios.append(width / height)
            lost_small += 1 not in labels
    assert set(choice.picks) == {0, 1} and flips == {True, False}
    # policy (b) crops: the aspect ratio changes and objects fall outside the crop
    assert any(abs(r - IMG_W / IMG_H) > 0.05 for r in ratios) and lost_small > 0


def scaled_pipeline(transforms: List[dict], factor: float) -> List[dict]:
    """The same pipeline with every resize scale and crop size multiplied by ``factor`` (small
    images for CPU runs)."""

    def scale(value):
        return tuple(int(round(v * factor)) for v in value)

    out = copy.deepcopy(transforms)
    for transform in out:
        for branch in transform.get('transforms', []):
            for step in branch:
                if 'scales' in step:
                    step['scales'] = [scale(s) for s in step['scales']]
                if 'crop_size' in step:
                    step['crop_size'] = scale(step['crop_size'])
    return out


# ----------------------------------------------------------------------------- optimizer
def release_rates(arch: str, name: str, shape: Tuple[int, ...]) -> Tuple[float, float]:
    """(lr, weight decay) of a parameter under the release's rules, from its release name.

    ResNet and MobileNetV2: mmcv's DefaultOptimizerConstructor with custom key 'norm' (decay 0
    for names containing it). ConvNeXt: the release's layer-wise decay constructor: decay 0 for
    1-D parameters and biases; the layer id by mmdet's get_layer_id_for_convnext, the release's
    function as mmdet 3.x ported it.
    """
    if arch != 'convnext_tiny':
        return BASE_LR, 0. if 'norm' in name else WEIGHT_DECAY
    from mmdet.engine.optimizers.layer_decay_optimizer_constructor import \
        get_layer_id_for_convnext
    layer_id = get_layer_id_for_convnext(name, NUM_LAYERS)
    decay = 0. if len(shape) == 1 or name.endswith('.bias') else WEIGHT_DECAY
    return BASE_LR * DECAY_RATE**(NUM_LAYERS + 1 - layer_id), decay


def optimizer_rates(model: torch.nn.Module, cfg: Config) -> Dict[str, Tuple[float, float]]:
    """name -> (lr, weight decay) of every parameter the built optimizer trains."""
    optimizer = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper)).optimizer
    by_id = {id(p): (g['lr'], g['weight_decay']) for g in optimizer.param_groups
             for p in g['params']}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def release_names(arch: str, budget: Optional[str]) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """mmkw parameter name -> (release name, release shape) of the detection backbone."""
    shapes = released_layout(arch, budget, detection=True).shapes()
    state = {f'backbone.{k}': torch.empty(s, device='meta') for k, s in shapes.items()}
    renamed, _ = rename_official(state, Target(arch, budget, task='detection'))
    return {new: (old, tuple(state[old].shape)) for old, (new, _, _) in renamed.items()
            if new is not None and old.rsplit('.', 1)[-1] not in BUFFERS}


@pytest.mark.parametrize('arch,budget', list(DETECTION_CONFIGS),
                         ids=lambda v: str(v) if v is not None else 'plain')
def test_every_parameter_trains_at_the_releases_rates(arch, budget):
    cfg = load(REPO / DETECTION_CONFIGS[arch, budget])
    model = build_detector(cfg)
    rates = optimizer_rates(model, cfg)
    names = release_names(arch, budget)
    params = dict(model.named_parameters())
    backbone = {n for n in params if n.startswith('backbone.')}
    assert backbone == set(names)
    frozen_here = {n for n in backbone if not params[n].requires_grad}
    frozen_there = {n for n in backbone
                    if names[n][0][len('backbone.'):].startswith(RELEASE_FROZEN[arch])}
    # the release freezes the same layers; mmkw also freezes the warehouses they draw from
    assert frozen_there <= frozen_here
    assert all('warehouse_manager.weights' in n for n in frozen_here - frozen_there)
    for name, (lr, decay) in rates.items():
        release_name, shape = names.get(name, (name, tuple(params[name].shape)))
        want = release_rates(arch, release_name, shape)
        assert (lr, decay) == pytest.approx(want, rel=1e-9), (name, release_name)
    if arch != 'convnext_tiny':
        exempt = {n for n, (_, d) in rates.items() if d == 0}
        # names decide, not layer types: only the KW attentions' norm1 is exempt
        assert all('.attention.norm1.' in n for n in exempt)
        assert bool(exempt) == (budget is not None)


LAYER_OF = {  # parameter -> layer id under the release's rule (num_layers 6: ids 0..7)
    'backbone.downsample_layers.0.0.bias': 0,
    'backbone.downsample_layers.0.1.weight': 0,
    'backbone.stages.0.2.depthwise_conv.bias': 1,
    'backbone.downsample_layers.1.0.weight': 2,
    'backbone.stages.1.0.pointwise_conv1.bias': 2,
    'backbone.downsample_layers.2.1.bias': 3,
    'backbone.stages.2.2.pointwise_conv2.bias': 3,
    'backbone.stages.2.3.depthwise_conv.bias': 4,
    'backbone.stages.2.8.norm.weight': 5,
    'backbone.downsample_layers.3.1.bias': 6,
    'backbone.stages.3.2.gamma': 6,
    'backbone.norm3.weight': 7,
    'neck.lateral_convs.0.conv.weight': 7,
    'roi_head.mask_head.conv_logits.weight': 7,
}
PLAIN_LAYER_OF = {
    'backbone.downsample_layers.0.0.weight': 0,
    'backbone.stages.2.8.pointwise_conv1.weight': 5,
}
KW_LAYER_OF = {  # KW convs keep their kernels in the warehouses, which train at the full lr
    'backbone.downsample_layers.0.0.attention.fc1.weight': 0,
    'backbone.stages.2.4.depthwise_conv.attention.fc2.weight': 4,
    'backbone.warehouse_manager.weights.0': 7,
    'backbone.warehouse_manager.weights.11': 7,
}


@pytest.mark.parametrize('config', [REPO / DETECTION_CONFIGS['convnext_tiny', b]
                                    for b in (None, '1x')], ids=lambda c: c.stem)
def test_convnext_layer_wise_lr_of_named_parameters(config):
    cfg = load(config)
    model = build_detector(cfg)
    rates = optimizer_rates(model, cfg)
    kw = cfg.model.backbone.budget is not None
    table = {**LAYER_OF, **(KW_LAYER_OF if kw else PLAIN_LAYER_OF)}
    for name, layer_id in table.items():
        assert name in rates, name
        assert convnext_layer_id(name, NUM_LAYERS) == layer_id, name
        assert rates[name][0] == pytest.approx(BASE_LR * DECAY_RATE**(7 - layer_id)), name
    # weight decay: weights yes; norms, biases no; layer scales only in the KW rows
    weight = 'attention.fc1.weight' if kw else 'weight'
    assert rates[f'backbone.stages.1.0.pointwise_conv1.{weight}'][1] == WEIGHT_DECAY
    assert rates['backbone.stages.1.0.norm.weight'][1] == 0.
    assert rates['neck.lateral_convs.0.conv.bias'][1] == 0.
    assert rates['backbone.stages.1.0.gamma'][1] == (WEIGHT_DECAY if kw else 0.)
    if not kw:  # mmdet 3.x's port of the release's constructor builds the same groups
        mmdet_cfg = copy.deepcopy(cfg.optim_wrapper)
        mmdet_cfg.constructor = 'LearningRateDecayOptimizerConstructor'
        optimizer = build_optim_wrapper(model, mmdet_cfg).optimizer
        by_id = {id(p): (g['lr'], g['weight_decay']) for g in optimizer.param_groups
                 for p in g['params']}
        assert rates == {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_layer_decay_constructor_refuses_bad_settings():
    from mmdet.models.backbones import ResNet
    model = torch.nn.Module()
    model.backbone = ResNet(18)
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
               constructor='ConvNeXtLayerDecayOptimWrapperConstructor',
               paramwise_cfg=dict(num_layers=6, decay_rate=0.95))
    with pytest.raises(ValueError, match="no trainable 'backbone.stages"):
        build_optim_wrapper(model, copy.deepcopy(cfg))
    for bad, match in ((dict(num_layers=6, decay_rate=0.95, decay_type='stage_wise'),
                        'layer_wise'),
                       (dict(decay_rate=0.95), 'num_layers'),
                       (dict(num_layers=6, decay_rate=0.95, norm_decay_mult=0.), 'unknown')):
        with pytest.raises(ValueError, match=match):
            build_optim_wrapper(model, dict(cfg, paramwise_cfg=bad))
    with pytest.raises(ValueError, match='num_layers=4 is too small'):
        convnext_layer_id('backbone.stages.2.8.depthwise_conv.weight', 4)


# ----------------------------------------------------------------------------- unused params
def training_batch(cfg: Config, directory: Path, objects_per_image) -> dict:
    """Images through the config's own pipeline at a fifth of its scales."""
    pipeline, _ = build_pipeline(scaled_pipeline(cfg.train_dataloader.dataset.pipeline, 0.2))
    samples = []
    for index, objects in enumerate(objects_per_image):
        np.random.seed(index)
        random.seed(index)
        samples.append(pipeline(write_sample(directory, objects)))
    return pseudo_collate(samples)


@pytest.mark.slow
@pytest.mark.parametrize('config', [REPO / DETECTION_CONFIGS[k] for k in (
    ('resnet50', '1x'), ('mobilenetv2_100', '1x'), ('convnext_tiny', '1x'))],
    ids=lambda c: c.stem)
def test_every_trainable_parameter_gets_a_gradient(config, tmp_path, one_thread):
    """What DDP with find_unused_parameters=False needs, frozen stages and their warehouses,
    and batches whose images have no objects (negative crops), included."""
    cfg = load(config)
    model = build_detector(cfg)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert bool(frozen) == (config not in CONVNEXT)
    for objects_per_image in ((OBJECTS, []), ([], [])):
        model.zero_grad(set_to_none=True)
        data = model.data_preprocessor(training_batch(cfg, tmp_path, objects_per_image), True)
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, (len(objects_per_image[0]), unused[:5])


def dist_train(config: Path, work_dir: Path, *options: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PORT=str(29700 + os.getpid() % 1000), PYTHON=sys.executable)
    return subprocess.run(
        ['bash', str(REPO / 'tools' / 'dist_train.sh'), str(config), '2', '--work-dir',
         str(work_dir), '--no-validate', *(('--cfg-options', *options) if options else ())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_run_with_frozen_stage_has_no_unused_parameters(shapes_root, tmp_path):
    """tools/dist_train.sh, 2 CPU processes, DDP with find_unused_parameters=False: the demo's
    KW ResNet-18 with frozen_stages=1 and the release's pipeline (scaled to the shapes) and
    weight decay. torch's DDP stops at the next iteration when a parameter got no gradient,
    as the control run, whose last stage is cut off from the neck, shows."""
    recipe = load(CONFIGS[0])
    cfg = load(DEMO)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = f'{shapes_root}/'
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.train_dataloader.dataset.pipeline = scaled_pipeline(
        recipe.train_dataloader.dataset.pipeline, 0.2)
    cfg.optim_wrapper.paramwise_cfg = recipe.optim_wrapper.paramwise_cfg
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.frozen_stages = 1
    cfg.find_unused_parameters = False
    cfg.train_cfg.max_epochs = 2  # 2 iterations per process and epoch
    cfg.default_hooks.logger.interval = 1
    config = tmp_path / 'ddp_recipe.py'
    cfg.dump(str(config))

    run = dist_train(config, tmp_path / 'ddp')
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / 'ddp' / 'epoch_2.pth').is_file()

    control = dist_train(config, tmp_path / 'control', 'model.backbone.out_indices=[0,1,2]',
                         'model.neck.in_channels=[64,128,256]')
    assert control.returncode != 0
    assert 'did not receive grad' in control.stdout + control.stderr
