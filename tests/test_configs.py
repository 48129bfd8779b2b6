"""Every config under configs/ loads with mmengine's Config and builds its model."""
from pathlib import Path

import pytest
from mmengine.config import Config

from mmkw.analysis.models import build_model_from_config
from mmkw.ops import DynamicAttention, KWAttention

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


def test_configs_found():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: f'{p.parent.name}/{p.name}')
def test_config_builds_model(path):
    cfg = Config.fromfile(str(path))
    model = build_model_from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    backbone_type = cfg.model.backbone.type
    assert model.backbone.__class__.__name__ == backbone_type.split('.')[-1]
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    pretrained = isinstance(cfg.model.backbone.get('init_cfg'), dict) and \
        cfg.model.backbone.init_cfg.get('type') == 'Pretrained'
    if any(isinstance(m, KWAttention) for m in model.modules()):
        if pretrained:
            # fine-tuning disables the init strategy (A.1.2)
            assert not any(m.init_strategy for m in model.modules()
                           if isinstance(m, KWAttention)) and 'KWTemperatureHook' not in hooks
        else:
            assert 'KWTemperatureHook' in hooks
    elif any(isinstance(m, DynamicAttention) for m in model.modules()):
        # ODConv / DY-Conv: T from 30 to 1 in pretraining, T = 1 when fine-tuning
        assert ('TemperatureHook' in hooks) != pretrained, hooks
    else:
        assert not {'KWTemperatureHook', 'TemperatureHook'} & set(hooks), \
            'a temperature hook in a config without dynamic-conv attentions'


DEMO_DETECTORS = sorted(p for p in CONFIGS if p.name.endswith('_shapes.py'))


@pytest.mark.parametrize('path', DEMO_DETECTORS, ids=lambda p: p.name)
def test_demo_detector_starts_from_its_pretraining_checkpoint(path):
    # the demo fine-tunes from the last epoch the digits config trains and saves: a schedule
    # change on one side only would leave the detector without its weights
    checkpoint = Path(Config.fromfile(str(path)).model.backbone.init_cfg.checkpoint)
    assert checkpoint.parts[0] == 'work_dirs' and checkpoint.name.startswith('epoch_')
    pretraining = [p for p in CONFIGS if p.stem == checkpoint.parent.name]
    assert len(pretraining) == 1, checkpoint
    cfg = Config.fromfile(str(pretraining[0]))
    epochs = cfg.train_cfg.max_epochs
    assert checkpoint.name == f'epoch_{epochs}.pth'
    assert epochs % cfg.default_hooks.checkpoint.interval == 0
