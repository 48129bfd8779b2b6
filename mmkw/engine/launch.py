"""Launcher glue shared by ``tools/train.py`` and ``tools/test.py``."""
import os
import shutil
import subprocess
import warnings

import torch
import torch.distributed as dist
from mmengine.config import Config

# what tools/slurm_train.sh's srun gives every task, and mmengine's slurm launcher reads
SLURM_TASK_VARIABLES = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
CPU_LAUNCHERS = ('pytorch', 'slurm')


def setup_distributed(cfg: Config, launcher: str, training: bool = True) -> None:
    """Make a ``--launcher pytorch`` or ``--launcher slurm`` run work without GPUs.

    mmengine's pytorch and slurm launchers call ``torch.cuda.set_device`` and its Runner wraps
    the model in DDP with ``device_ids=[LOCAL_RANK]``; both fail on a machine without a GPU. On
    such a machine we start the gloo process group ourselves (the Runner then skips its own
    init), reading the rendezvous from torchrun's variables (``tools/dist_train.sh``) or from
    Slurm's task variables (``tools/slurm_train.sh``), and wrap the CPU model without device ids.
    With GPUs nothing changes.

    Args:
        cfg: the run's config; ``env_cfg.dist_cfg.backend`` and ``model_wrapper_cfg`` are set
            for the CPU run.
        launcher: ``--launcher`` of the tool: 'none', 'pytorch', 'slurm' or 'mpi'.
        training: False for ``tools/test.py``. torch's SyncBatchNorm works only on GPUs (DDP
            refuses to wrap a CPU model that holds one, and its training step refuses CPU
            tensors), so on the CPU a training run with ``sync_bn`` is refused with a clear
            error, and an evaluation drops the switch with a warning: in eval mode SyncBN and
            BatchNorm compute the same thing from the running statistics.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher not in CPU_LAUNCHERS:
        raise ValueError(f'launcher {launcher!r} needs GPUs; on CPU use --launcher pytorch '
                         '(tools/dist_train.sh), slurm (tools/slurm_train.sh) or none')
    if cfg.get('sync_bn') is not None:
        if training:
            raise ValueError(
                f"sync_bn={cfg.sync_bn!r}: torch's SyncBatchNorm works only on GPUs (on the CPU, "
                'DDP refuses the model: "SyncBatchNorm layers only work with GPU modules"). '
                'Train without it on the CPU (--cfg-options sync_bn=None); see '
                'docs/distributed.md for the attention norms with small per-device batches')
        warnings.warn(f'sync_bn={cfg.sync_bn!r} ignored on the CPU: SyncBatchNorm needs GPUs, '
                      'and in evaluation it computes what BatchNorm does')
        cfg.sync_bn = None
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
    if backend != 'gloo':
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if launcher == 'slurm':
        export_slurm_rendezvous()
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    wrapper.setdefault('device_ids', None)
    wrapper.setdefault('broadcast_buffers', False)
    # mmengine reads a top-level find_unused_parameters only when it builds the wrapper config
    # itself; with ours given, it would be dropped
    if cfg.get('find_unused_parameters') is not None:
        wrapper.setdefault('find_unused_parameters', cfg.find_unused_parameters)
    cfg.model_wrapper_cfg = wrapper


def export_slurm_rendezvous() -> None:
    """Set torch's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    from the variables srun gives each task, as mmengine's slurm launcher does (which also
    selects a GPU, so it cannot run on a CPU node).

    ``MASTER_ADDR`` and ``MASTER_PORT`` are kept when set (``tools/slurm_train.sh`` exports
    ``MASTER_PORT`` from ``PORT``); otherwise the master is the first host of
    ``SLURM_NODELIST`` (expanded by ``scontrol``) on port 29500.
    """
    missing = [name for name in SLURM_TASK_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher slurm: {", ".join(missing)} not set, so this process was not started '
            'by srun; start the job with tools/slurm_train.sh / slurm_test.sh, or use '
            '--launcher pytorch (tools/dist_train.sh) outside Slurm')
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = first_slurm_host(os.environ['SLURM_NODELIST'])


def first_slurm_host(node_list: str) -> str:
    """The first host name of a Slurm node list such as ``node[01-04],gpu7``.

    A list of one plain host name is returned as it is; compressed lists need ``scontrol``.
    """
    if not any(char in node_list for char in '[,'):
        return node_list
    if shutil.which('scontrol') is None:
        raise RuntimeError(f'--launcher slurm: cannot expand SLURM_NODELIST={node_list!r} '
                           'without scontrol; set MASTER_ADDR to the first node')
    hosts = subprocess.run(['scontrol', 'show', 'hostnames', node_list], check=True,
                           capture_output=True, text=True).stdout.split()
    if not hosts:
        raise RuntimeError(f'scontrol show hostnames {node_list} printed no host; '
                           'set MASTER_ADDR to the first node')
    return hosts[0]


def teardown_distributed() -> None:
    """End the process group once the run is over.

    Left to the interpreter's exit, gloo's worker threads are destroyed in an undefined order
    and a process sometimes aborts after finishing its work ("terminate called without an
    active exception", exit status -6), which fails the whole distributed run.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
