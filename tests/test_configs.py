"""Every config under configs/ loads with mmengine's Config and builds its model."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmkw.ops import KWAttention

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


def test_configs_found():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: f'{p.parent.name}/{p.name}')
def test_config_builds_model(path):
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    backbone_type = cfg.model.backbone.type
    assert model.backbone.__class__.__name__ == backbone_type.split('.')[-1]
    if any(isinstance(m, KWAttention) for m in model.modules()):
        hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
        pretrained = isinstance(cfg.model.backbone.get('init_cfg'), dict) and \
            cfg.model.backbone.init_cfg.get('type') == 'Pretrained'
        if pretrained:
            # fine-tuning disables the init strategy (A.1.2)
            assert cfg.model.backbone.attention_init is None and 'KWTemperatureHook' not in hooks
        else:
            assert 'KWTemperatureHook' in hooks
