"""Checkpoint converters (not imported by ``import mmkw``: they are tools, not model code)."""
from .official import (ConversionError, ConversionResult, Target, convert_official,
                       convert_state_dict, detect_arch, expected_shapes,
                       expected_shapes_from_config, infer_target, load_official_checkpoint,
                       save_checkpoint)

__all__ = ['ConversionError', 'ConversionResult', 'Target', 'convert_official',
           'convert_state_dict', 'detect_arch', 'expected_shapes', 'expected_shapes_from_config',
           'infer_target', 'load_official_checkpoint', 'save_checkpoint']
