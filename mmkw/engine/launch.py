"""Launcher glue shared by ``tools/train.py`` and ``tools/test.py``."""
import os

import torch
import torch.distributed as dist
from mmengine.config import Config


def setup_distributed(cfg: Config, launcher: str) -> None:
    """Make a ``--launcher pytorch`` run work without GPUs.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` and wraps the model in DDP
    with ``device_ids=[LOCAL_RANK]``; both fail on a machine without a GPU. On such a machine we
    start the gloo process group ourselves (the Runner then skips its own init) and wrap the
    CPU model without device ids. With GPUs nothing changes.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f'launcher {launcher!r} needs GPUs; on CPU use --launcher pytorch '
                         '(tools/dist_train.sh) or none')
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
    if backend != 'gloo':
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper.setdefault('device_ids', None)
    wrapper.setdefault('broadcast_buffers', False)
    cfg.model_wrapper_cfg = wrapper


def teardown_distributed() -> None:
    """End the process group once the run is over.

    Left to the interpreter's exit, gloo's worker threads are destroyed in an undefined order
    and a process sometimes aborts after finishing its work ("terminate called without an
    active exception", exit status -6), which fails the whole distributed run.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
