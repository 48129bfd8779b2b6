"""Mask R-CNN fine-tuning through the real mmdet Runner: a KW backbone loaded from an
mmpretrain checkpoint, the init strategy off (tau stays 0), COCO evaluation, refused
mismatched checkpoints, and tools/dist_{train,test}.sh with 2 CPU processes."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner

import mmkw  # noqa: F401
from mmkw.analysis.models import build_model_from_config
from mmkw.engine import KWTemperatureHook
from mmkw.models import KWResNet, KWResNet_CIFAR
from mmkw.ops import KWAttention, get_temperature

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'configs' / 'mask_rcnn' / 'mask-rcnn_kw1x-r18-slim_fpn_shapes.py'


def pretraining_checkpoint(path: Path, budget: str = '1x') -> dict:
    """An mmpretrain-style checkpoint of a KW ResNet-18 digits classifier backbone."""
    torch.manual_seed(0)
    backbone = KWResNet_CIFAR(18, budget=budget)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 512)
    torch.save({'state_dict': state, 'meta': {'epoch': 3}}, path)
    return state


def detection_cfg(shapes_root: Path, work_dir: Path, checkpoint: Path) -> Config:
    cfg = Config.fromfile(str(DEMO))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(shapes_root) + '/'
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.val_evaluator.ann_file = str(shapes_root / 'annotations' / 'instances_val2017.json')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    cfg.train_cfg.max_epochs = 1
    cfg.train_cfg.val_interval = 1
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg


class TauProbe(Hook):

    def __init__(self):
        self.taus = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.taus.append(get_temperature(runner.model))


@pytest.mark.slow
def test_finetune_mask_rcnn_with_pretrained_kw_backbone(shapes_root, tmp_path):
    checkpoint = tmp_path / 'digits.pth'
    pretraining_checkpoint(checkpoint)
    runner = Runner.from_cfg(detection_cfg(shapes_root, tmp_path / 'work', checkpoint))
    probe = TauProbe()
    runner.register_hook(probe)
    runner.train()
    # training ran, tau never left 0 and the strategy is off in every attention
    assert len(probe.taus) == 4 and set(probe.taus) == {0.0}
    attentions = [m for m in runner.model.modules() if isinstance(m, KWAttention)]
    assert attentions and not any(m.init_strategy for m in attentions)
    scalars = runner.message_hub.log_scalars
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert f'val/{key}' in scalars, sorted(scalars)


def test_pretrained_backbone_loads_every_key(shapes_root, tmp_path):
    checkpoint = tmp_path / 'digits.pth'
    state = pretraining_checkpoint(checkpoint)
    cfg = detection_cfg(shapes_root, tmp_path / 'work', checkpoint)
    detector = build_model_from_config(cfg)
    detector.init_weights()
    loaded = detector.backbone.state_dict()
    backbone_keys = {k[len('backbone.'):] for k in state if k.startswith('backbone.')}
    assert backbone_keys == set(loaded)
    for key in backbone_keys:
        assert torch.equal(loaded[key], state['backbone.' + key]), key


def test_mismatched_budget_checkpoint_is_refused(shapes_root, tmp_path):
    checkpoint = tmp_path / 'digits_2x.pth'
    pretraining_checkpoint(checkpoint, budget='2x')
    cfg = detection_cfg(shapes_root, tmp_path / 'work', checkpoint)
    detector = build_model_from_config(cfg)
    with pytest.raises(ValueError, match=r"warehouse 'warehouse_manager.weights.0' "
                       r"\('stage0'.*another budget or depth"):
        detector.init_weights()


class FakeRunner:
    """What KWTemperatureHook.before_train reads from a runner."""

    def __init__(self, model, load_from=None):
        self.model = model
        self._load_from = load_from
        self.train_dataloader = [None] * 10
        self.max_iters = 100


def test_hook_warns_when_enabled_for_a_pretrained_backbone():
    logger = MMLogger.get_instance('mmkw_test_warning', log_level='WARNING')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    model = KWResNet(18, init_cfg=dict(type='Pretrained', checkpoint='x.pth'))
    KWTemperatureHook(tau_epochs=1).before_train(FakeRunner(model))
    messages = [r.getMessage() for r in records]
    assert any('disables it for fine-tuning' in m for m in messages), messages
    records.clear()
    off = KWResNet(18, attention_init=None)
    hook = KWTemperatureHook(tau_epochs=1)
    hook.before_train(FakeRunner(off))
    assert not hook.enabled
    assert any('does nothing' in r.getMessage() for r in records)


@pytest.mark.slow
def test_dist_train_and_test_detection_on_cpu(shapes_root, tmp_path):
    checkpoint = tmp_path / 'digits.pth'
    pretraining_checkpoint(checkpoint)
    options = [
        f'train_dataloader.dataset.data_root={shapes_root}/',
        f'val_dataloader.dataset.data_root={shapes_root}/',
        f'test_dataloader.dataset.data_root={shapes_root}/',
        f'val_evaluator.ann_file={shapes_root}/annotations/instances_val2017.json',
        f'test_evaluator.ann_file={shapes_root}/annotations/instances_val2017.json',
        f'model.backbone.init_cfg.checkpoint={checkpoint}',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
    ]
    env = dict(os.environ, PORT=str(29600 + os.getpid() % 1000), PYTHON=sys.executable)
    work_dir = tmp_path / 'dist'
    train = subprocess.run(
        ['bash', str(REPO / 'tools' / 'dist_train.sh'), str(DEMO), '2', '--work-dir',
         str(work_dir), '--cfg-options', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    trained = work_dir / 'epoch_1.pth'
    assert trained.is_file()
    test = subprocess.run(
        ['bash', str(REPO / 'tools' / 'dist_test.sh'), str(DEMO), str(trained), '2',
         '--work-dir', str(tmp_path / 'dist_test'), '--cfg-options', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert 'coco/segm_mAP' in test.stdout + test.stderr
