"""Let mmengine checkpoints load under torch's ``weights_only=True`` default (torch >= 2.6).

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; its checkpoints hold, besides
tensors, the message hub's ``HistoryBuffer`` objects and numpy scalars/arrays, which the safe
unpickler rejects, so ``--resume`` fails with an UnpicklingError. Rather than turning the safe
loader off (which would let any pickled object run code), we allow-list exactly these types.

A ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``.
Allowing ``getattr`` itself would reopen the door (``getattr`` reaches any attribute), so the
name ``builtins.getattr`` is bound to a function that only returns those four methods.
"""
import pickle

import numpy as np
import torch


def _numpy_globals() -> list:
    multiarray = getattr(np, '_core', None)
    multiarray = multiarray.multiarray if multiarray is not None else np.core.multiarray
    dtype_classes = [type(np.dtype(name)) for name in (
        'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
        'float16', 'float32', 'float64', 'complex64', 'complex128', 'object', 'str')]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes]


# HistoryBuffer's own statistics; mmengine registers them lazily (on the first buffer built), so
# a fresh process that only loads a checkpoint has an empty registry.
_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})


def _history_buffer_getattr(obj, name: str):
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and (name in _STATISTICS or name in HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only the statistics methods of '
        'mmengine HistoryBuffer are allowed in a weights_only load')


def register_checkpoint_safe_globals() -> None:
    """Allow-list the non-tensor types of mmengine checkpoints for ``torch.load``."""
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return  # torch < 2.4 loads them anyway
    from mmengine.logging import HistoryBuffer
    torch.serialization.add_safe_globals(
        [HistoryBuffer, *_numpy_globals(), (_history_buffer_getattr, 'builtins.getattr')])
