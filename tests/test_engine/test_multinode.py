"""Multi-node and Slurm launching on one CPU machine.

A real two-"node" run of ``tools/dist_train.sh`` (two torchrun agents on localhost, one gloo
process each), the srun command lines of ``tools/slurm_train.sh`` / ``slurm_test.sh`` (recorded
by a stand-in ``srun`` on PATH), a real training and evaluation through them with the stand-in
starting the tasks as srun would, and the CPU glue of ``--launcher slurm``.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from mmkw.engine import launch

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools'
DEMO = REPO / 'configs' / 'kw_resnet' / 'kw1x-resnet18_1xb16_digits.py'
# variables of an enclosing torchrun or Slurm job that would leak into the launched runs
JOB_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
                 'MASTER_PORT', 'NNODES', 'NODE_RANK', 'PORT', 'GPUS', 'GPUS_PER_NODE',
                 'CPUS_PER_TASK', 'SRUN_ARGS', 'GRES', 'SLURM_PROCID', 'SLURM_NTASKS',
                 'SLURM_NODELIST', 'SLURM_LOCALID')

# A stand-in for srun: it records its options, the program and the variables the scripts set
# to $FAKE_SRUN_RECORD, then (when $FAKE_SRUN_RUN=1) starts --ntasks copies of the program with
# the task variables srun sets, and fails as srun --kill-on-bad-exit does when one task fails.
FAKE_SRUN = '''\
#!{python}
import json, os, subprocess, sys, time
argv = sys.argv[1:]
options = []
while argv and argv[0].startswith('-'):
    option = argv.pop(0)
    options.append(option)
    if option == '-p':
        options.append(argv.pop(0))
value = dict(option.split('=', 1) for option in options if '=' in option)
env_seen = {{k: os.environ.get(k) for k in ('MASTER_PORT', 'OMP_NUM_THREADS', 'PYTHONPATH')}}
with open(os.environ['FAKE_SRUN_RECORD'], 'w') as f:
    json.dump(dict(options=options, command=argv, env=env_seen), f)
if os.environ.get('FAKE_SRUN_RUN') != '1':
    sys.exit(0)
ntasks = int(value['--ntasks'])
per_node = int(value['--ntasks-per-node'])
tasks = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks),
               SLURM_LOCALID=str(rank % per_node), SLURM_NODELIST='localhost',
               SLURM_JOB_NAME=value['--job-name'])
    tasks.append(subprocess.Popen(argv, env=env))
while True:
    codes = [task.poll() for task in tasks]
    if any(code not in (None, 0) for code in codes):
        for task in tasks:
            if task.poll() is None:
                task.kill()
        sys.exit(1)
    if all(code == 0 for code in codes):
        sys.exit(0)
    time.sleep(0.2)
'''


def free_port() -> int:
    """A TCP port that nothing listens on now (the OS's choice), so that concurrent test runs
    and other jobs on the machine do not collide on 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def clean_env(**overrides: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in JOB_VARIABLES}
    env.update(PYTHON=sys.executable, **overrides)
    return env


def tiny_run_options(digits_root: Path) -> List[str]:
    """``--cfg-options`` of a few-iteration run of the digits config with a slim KW ResNet-18:
    32 training images in batches of 8 per process, 16 validation images, one epoch."""
    return [
        f'train_dataloader.dataset.data_root={digits_root}',
        f'val_dataloader.dataset.data_root={digits_root}',
        f'test_dataloader.dataset.data_root={digits_root}',
        'train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=16',
        'test_dataloader.dataset.indices=16',
        'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1', 'model.backbone.base_channels=16',
        'model.backbone.stem_channels=16', 'model.head.in_channels=128',
    ]


def read_log(work_dir: Path) -> str:
    logs = sorted(work_dir.glob('*/*.log'))
    assert logs, f'no log file under {work_dir}'
    return logs[-1].read_text()


@pytest.mark.slow
def test_two_nodes_one_process_each(digits_root, tmp_path):
    """Two dist_train.sh invocations as two nodes of one job (NNODES=2, NODE_RANK=0/1, one
    process each, rendezvous on localhost): both finish, and only node 0 (rank 0) writes the
    checkpoint. Each node gets its own work dir, as nodes without a shared file system would,
    so that what rank 1 wrote can be told apart."""
    port = str(free_port())
    runs = []
    for node_rank in (0, 1):
        work_dir = tmp_path / f'node{node_rank}'
        env = clean_env(NNODES='2', NODE_RANK=str(node_rank), MASTER_ADDR='127.0.0.1',
                        PORT=port)
        output = open(tmp_path / f'node{node_rank}.out', 'w')
        command = ['bash', str(TOOLS / 'dist_train.sh'), str(DEMO), '1', '--work-dir',
                   str(work_dir), '--cfg-options', *tiny_run_options(digits_root)]
        runs.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                      stderr=subprocess.STDOUT), output, work_dir))
    try:
        codes = [process.wait(timeout=300) for process, _, _ in runs]
    finally:
        for process, output, _ in runs:
            if process.poll() is None:
                process.kill()
            output.close()
    outputs = [(tmp_path / f'node{rank}.out').read_text()[-3000:] for rank in (0, 1)]
    assert codes == [0, 0], '\n\n'.join(outputs)

    node0, node1 = runs[0][2], runs[1][2]
    log = read_log(node0)
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # the world size
    # one process per node, world size 2: 32 images in batches of 8 give 2 iterations each
    # (a lone process would run 4)
    assert 'Epoch(train) [1][2/2]' in log and 'Epoch(train) [1][4/4]' not in log
    assert 'accuracy/top1' in log and 'tau:' in log
    assert (node0 / 'epoch_1.pth').is_file()
    assert (node0 / 'last_checkpoint').read_text().strip().endswith('epoch_1.pth')
    assert list(node1.rglob('*.pth')) == [] and not (node1 / 'last_checkpoint').exists()
    state = torch.load(node0 / 'epoch_1.pth')['state_dict']
    assert any(k.startswith('backbone.warehouse_manager.weights.') for k in state)


@pytest.fixture
def fake_srun(tmp_path):
    """A bin dir with the stand-in srun first on PATH, and the file it records to."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(0o755)
    record = tmp_path / 'srun.json'
    env = clean_env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                    FAKE_SRUN_RECORD=str(record))
    return env, record


def isolate_job_variables(monkeypatch) -> None:
    """Unset the job variables for one test, and have monkeypatch restore them afterwards also
    where the code under test sets them (a plain delenv of an unset name records nothing)."""
    for name in JOB_VARIABLES:
        monkeypatch.setenv(name, 'placeholder')
        monkeypatch.delenv(name)


def run_script(script: str, args: List[str], env: Dict[str, str], timeout: float = 60):
    return subprocess.run(['bash', str(TOOLS / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_slurm_train_srun_command(fake_srun, tmp_path):
    env, record = fake_srun
    env.update(GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='3', PORT='29611',
               SRUN_ARGS='--quotatype=auto --time=72:00:00')
    result = run_script('slurm_train.sh', ['gpu', 'kw-r50', 'cfg.py', 'work_dirs/x', '--amp',
                                           '--cfg-options', 'a=1'], env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(record.read_text())
    assert seen['options'] == [
        '-p', 'gpu', '--job-name=kw-r50', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
        '--cpus-per-task=3', '--kill-on-bad-exit=1', '--quotatype=auto', '--time=72:00:00']
    assert seen['command'] == [
        sys.executable, '-u', str(TOOLS / 'train.py'), 'cfg.py', '--work-dir=work_dirs/x',
        '--launcher=slurm', '--amp', '--cfg-options', 'a=1']
    # every task must meet on the same port: PORT reaches them as MASTER_PORT
    assert seen['env']['MASTER_PORT'] == '29611'
    assert seen['env']['PYTHONPATH'].split(os.pathsep)[0] == str(REPO)


def test_slurm_scripts_defaults_and_usage(fake_srun):
    env, record = fake_srun
    result = run_script('slurm_test.sh', ['gpu', 'eval', 'cfg.py', 'model.pth'], env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(record.read_text())
    # mmdet's defaults: 8 tasks, 8 per node, 5 CPUs each; no port unless PORT is given
    assert seen['options'] == [
        '-p', 'gpu', '--job-name=eval', '--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8',
        '--cpus-per-task=5', '--kill-on-bad-exit=1']
    assert seen['command'] == [sys.executable, '-u', str(TOOLS / 'test.py'), 'cfg.py',
                               'model.pth', '--launcher=slurm']
    assert seen['env']['MASTER_PORT'] is None and seen['env']['OMP_NUM_THREADS'] == '1'

    # fewer tasks than a node holds: as many GPUs per node as tasks; GRES= for CPU partitions
    env.update(GPUS='2', GRES='')
    assert run_script('slurm_train.sh', ['cpu', 'j', 'cfg.py', 'wd'], env).returncode == 0
    options = json.loads(record.read_text())['options']
    assert '--ntasks=2' in options and '--ntasks-per-node=2' in options
    assert not any(option.startswith('--gres') for option in options)

    record.unlink()
    for script in ('slurm_train.sh', 'slurm_test.sh'):
        result = run_script(script, ['gpu', 'job', 'cfg.py'], env)
        assert result.returncode == 2 and 'usage:' in result.stderr
        assert not record.exists()


@pytest.mark.slow
def test_slurm_train_and_test_two_tasks(fake_srun, digits_root, tmp_path):
    """slurm_train.sh, then slurm_test.sh, each as 2 tasks started the way srun starts them
    (SLURM_PROCID/NTASKS/LOCALID/NODELIST set, no RANK or MASTER_ADDR), on a CPU partition:
    the tools' --launcher slurm meets on PORT with gloo, trains, and evaluates the checkpoint."""
    env, _ = fake_srun
    env.update(FAKE_SRUN_RUN='1', GPUS='2', GRES='', PORT=str(free_port()))
    work_dir = tmp_path / 'slurm'
    options = tiny_run_options(digits_root)
    train = run_script('slurm_train.sh', ['cpu', 'kw', str(DEMO), str(work_dir),
                                          '--cfg-options', *options], env, timeout=300)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert 'Epoch(train) [1][2/2]' in read_log(work_dir)
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()

    env['PORT'] = str(free_port())
    test = run_script('slurm_test.sh', ['cpu', 'kw-eval', str(DEMO), str(checkpoint),
                                        '--work-dir', str(tmp_path / 'eval'), '--cfg-options',
                                        *options], env, timeout=300)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert 'Epoch(test) [1/1]' in read_log(tmp_path / 'eval')
    assert 'accuracy/top1' in read_log(tmp_path / 'eval')


def test_slurm_rendezvous_from_task_variables(monkeypatch, tmp_path):
    isolate_job_variables(monkeypatch)
    monkeypatch.setenv('SLURM_PROCID', '5')
    monkeypatch.setenv('SLURM_NTASKS', '16')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'node[07-08]')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    scontrol = bin_dir / 'scontrol'
    scontrol.write_text(textwrap.dedent(f'''\
        #!/usr/bin/env bash
        echo "$@" > {tmp_path / 'scontrol.args'}
        printf 'node07\\nnode08\\n'
        '''))
    scontrol.chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    launch.export_slurm_rendezvous()
    assert (tmp_path / 'scontrol.args').read_text().split() == ['show', 'hostnames',
                                                                'node[07-08]']
    assert {k: os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                       'MASTER_PORT')} == dict(
        RANK='5', WORLD_SIZE='16', LOCAL_RANK='1', MASTER_ADDR='node07', MASTER_PORT='29500')

    # a port and master given by the job win
    monkeypatch.setenv('MASTER_PORT', '30001')
    monkeypatch.setenv('MASTER_ADDR', '10.0.0.3')
    launch.export_slurm_rendezvous()
    assert os.environ['MASTER_PORT'] == '30001' and os.environ['MASTER_ADDR'] == '10.0.0.3'


def test_slurm_launcher_errors_name_the_way_out(monkeypatch):
    isolate_job_variables(monkeypatch)
    monkeypatch.setenv('SLURM_NTASKS', '2')
    with pytest.raises(RuntimeError, match='SLURM_PROCID, SLURM_NODELIST not set.*srun'):
        launch.export_slurm_rendezvous()
    assert launch.first_slurm_host('gpu-node3') == 'gpu-node3'
    monkeypatch.setenv('PATH', '/nonexistent')
    with pytest.raises(RuntimeError, match='without scontrol; set MASTER_ADDR'):
        launch.first_slurm_host('gpu[1-4]')


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU glue only acts without GPUs')
def test_cpu_launcher_refuses_mpi():
    from mmengine.config import Config
    with pytest.raises(ValueError, match="launcher 'mpi' needs GPUs.*slurm"):
        launch.setup_distributed(Config(dict()), 'mpi')
