"""The paper's configs of the MobileNetV2 and ConvNeXt families, and of the peers DY-Conv and
ODConv, run a few iterations through the real Runners (mmpretrain pretraining on digits, mmdet
Mask R-CNN on shapes), with the recipes' hooks, optimizers and schedulers as written; only data,
batch and length shrink."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import mmkw  # noqa: F401
from mmkw.ops import DynamicAttention, KWAttention

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = ['configs/kw_mobilenet_v2/kw0.5x-mobilenet-v2_8xb32-150e_in1k.py',
            'configs/kw_mobilenet_v2/kw4x-mobilenet-v2-050_8xb32-150e_in1k.py',
            'configs/kw_convnext/kw0.75x-convnext-tiny_8xb512-adv-300e_in1k.py',
            'configs/odconv/odconv4x-resnet18_8xb32_in1k.py',
            'configs/dyconv/dyconv4x-mobilenet-v2-050_8xb32-150e_in1k.py']
FINETUNE = ['configs/mask_rcnn/mask-rcnn_kw1x-mobilenet-v2_fpn_1x_coco.py',
            'configs/mask_rcnn/mask-rcnn_kw1x-convnext-t_fpn_1x_coco.py',
            'configs/mask_rcnn/mask-rcnn_odconv4x-mobilenet-v2_fpn_1x_coco.py',
            'configs/mask_rcnn/mask-rcnn_dyconv4x-mobilenet-v2_fpn_1x_coco.py']


def shrink_loops(cfg, work_dir):
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.work_dir = str(work_dir)
    for hook in cfg.get('custom_hooks', []):
        if hook['type'] == 'KWTemperatureHook':
            hook.pop('tau_epochs', None)
            hook['tau_iters'] = 4
        elif hook['type'] == 'TemperatureHook':
            hook.pop('epochs', None)
            hook['iters'] = 4
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize('config', PRETRAIN, ids=lambda c: Path(c).stem)
def test_pretraining_config_runs(config, digits_root, tmp_path):
    cfg = Config.fromfile(str(REPO / config))
    cfg.model.head.num_classes = 10
    cfg.model.pop('train_cfg', None)  # mixup/cutmix need num_classes in the head's loss only
    cfg.data_preprocessor = dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3)
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CustomDataset', data_root=str(digits_root), ann_file='meta/train.txt',
                     data_prefix='train', classes=[str(i) for i in range(10)], indices=8,
                     pipeline=[dict(type='LoadImageFromFile'),
                               dict(type='Resize', scale=(32, 32)),
                               dict(type='PackInputs')]))
    runner = Runner.from_cfg(shrink_loops(cfg, tmp_path))
    runner.train()
    assert runner.iter == 2
    attentions = [m for m in runner.model.modules() if isinstance(m, DynamicAttention)]
    assert attentions
    # the warm-up moved the temperature away from its final value (KW: tau 1 -> 0 over 4
    # iterations, ODConv/DY-Conv: T 30 -> 1)
    scalar = 'train/tau' if isinstance(attentions[0], KWAttention) else 'train/temperature'
    assert scalar in runner.message_hub.log_scalars
    assert attentions[0].temperature != attentions[0].final_temperature


@pytest.mark.slow
@pytest.mark.parametrize('config', FINETUNE, ids=lambda c: Path(c).stem)
def test_finetune_config_runs(config, shapes_root, tmp_path):
    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.init_cfg = None  # no ImageNet checkpoint here; loading is tested apart
    cfg.model.roi_head.bbox_head.num_classes = 3
    cfg.model.roi_head.mask_head.num_classes = 3
    cfg.train_dataloader = dict(
        batch_size=1, num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CocoDataset', data_root=str(shapes_root) + '/',
                     metainfo=dict(classes=('circle', 'triangle', 'square')),
                     ann_file='annotations/instances_train2017.json',
                     data_prefix=dict(img='train2017/'), indices=2,
                     pipeline=[dict(type='LoadImageFromFile'),
                               dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                               dict(type='Resize', scale=(128, 128), keep_ratio=True),
                               dict(type='PackDetInputs')]))
    runner = Runner.from_cfg(shrink_loops(cfg, tmp_path))
    runner.train()
    assert runner.iter == 2
    attentions = [m for m in runner.model.modules() if isinstance(m, DynamicAttention)]
    # fine-tuning at the final temperature: KW's tau 0 with the init strategy off, T = 1
    assert attentions and all(m.temperature == m.final_temperature for m in attentions)
    assert all(not m.init_strategy for m in attentions if isinstance(m, KWAttention))
    assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar('train/loss').current()))
