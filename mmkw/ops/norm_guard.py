"""A clear error for the batch statistics of a one-sample batch.

The attentions of dynamic convs (KW's ``fc1 -> BatchNorm1d``, ODConv's and KernelDNA's
``BatchNorm2d`` on a 1x1 map) normalise one number per sample and channel, so in training they
need at least two samples per device. torch then only says "Expected more than 1 value per
channel when training", without naming the layer or the way out.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def check_norm_batch(norm: nn.Module, x: torch.Tensor, layer: str) -> None:
    """Raise a ValueError naming ``layer`` when ``norm`` is a BatchNorm in training mode that
    would normalise a single value per channel (a batch of one sample).

    Args:
        norm: the norm about to be applied.
        x: its input, ``[B, C]`` or ``[B, C, 1, 1]``.
        layer: what to name in the message (the class of the attention and its sizes).
    """
    if not (isinstance(norm, _BatchNorm) and norm.training):
        return
    if isinstance(norm, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1:
        return  # statistics over the samples of every device
    values_per_channel = x.numel() // max(x.shape[1], 1)
    if x.shape[0] == 1 and values_per_channel == 1:
        raise ValueError(
            f'{layer}: its attention BatchNorm ({type(norm).__name__}) got one sample in '
            'training mode, and batch statistics need at least 2 values per channel. Train with '
            'at least 2 samples per device, keep the attention norms in eval mode with the '
            "backbone's norm_eval=True (fine-tuning), or convert them to SyncBN "
            "(sync_bn='torch' in the config) so that statistics span the devices")
