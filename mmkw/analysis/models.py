"""Build the model of an mmpretrain or mmdet config, as the tools under ``tools/`` do."""
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope


def build_model_from_config(cfg: Config) -> torch.nn.Module:
    """Build ``cfg.model`` in the registry of the config's ``default_scope``.

    mmpretrain is assumed when the config names no scope, as mmpretrain's own tools do.
    """
    import mmkw  # noqa: F401  (registers the KW modules)
    scope = cfg.get('default_scope', 'mmpretrain')
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        raise ValueError(f"config default_scope {scope!r} is not supported: use 'mmpretrain' "
                         "or 'mmdet'")
    return MODELS.build(cfg.model)
