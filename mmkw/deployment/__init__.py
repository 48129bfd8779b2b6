"""Deployment helpers: ONNX export and verification of mmkw models (needs the ``deploy``
extra: ``pip install -e ".[deploy]"``). See ``docs/deployment.md``."""
from .export import (EXPORTERS, ExportableModel, calibrate_batch_norms, export_onnx,
                     format_op_counts, image_like_inputs, onnx_input_output_shapes,
                     onnx_op_counts, relative_error, require_onnx, verify_onnx)

__all__ = ['EXPORTERS', 'ExportableModel', 'calibrate_batch_norms', 'export_onnx',
           'format_op_counts', 'image_like_inputs', 'onnx_input_output_shapes', 'onnx_op_counts',
           'relative_error', 'require_onnx', 'verify_onnx']
