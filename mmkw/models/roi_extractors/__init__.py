"""RoI extractors. They build on mmdet's; mmdet is an optional extra of mmkw
(``pip install mmkw[det]``), so without it ``import mmkw`` still works and only these are
missing."""
import importlib.util

__all__ = []
if importlib.util.find_spec('mmdet') is not None:
    from .cpu_single_level import CPUSingleRoIExtractor  # noqa: F401
    __all__ = ['CPUSingleRoIExtractor']
