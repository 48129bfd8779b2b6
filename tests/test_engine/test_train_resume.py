"""The real mmpretrain Runner on the digits data: tau schedule, checkpoint keys, resume under
torch's weights_only default, and a 2-process CPU run of tools/dist_train.sh."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmkw  # noqa: F401
from mmkw.engine import KWTemperatureHook
from mmkw.ops import get_temperature

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / 'configs' / 'kw_resnet' / 'kw1x-resnet18_1xb16_digits.py'
ITERS_PER_EPOCH = 4


class Recorder(Hook):
    """Records (iteration, epoch, tau, lr) at the start of every training iteration."""
    priority = 'LOW'  # after the temperature hook (NORMAL) has set tau

    def __init__(self):
        self.rows = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        lr = runner.optim_wrapper.get_lr()['lr'][0]
        self.rows.append((runner.iter, runner.epoch, get_temperature(model), lr))


class Interrupt(Hook):
    """Stops the run after a given epoch, after its checkpoint was written."""
    priority = 'LOWEST'

    def __init__(self, epoch):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        # mmengine counts the epoch up after this hook
        if runner.epoch + 1 == self.epoch:
            raise KeyboardInterrupt('simulated kill')


def demo_cfg(digits_root, work_dir, max_epochs=2):
    cfg = Config.fromfile(str(DEMO))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(digits_root)
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.train_dataloader.batch_size = 8
    cfg.train_dataloader.dataset.indices = 8 * ITERS_PER_EPOCH
    cfg.val_dataloader.dataset.indices = 16
    cfg.train_cfg.max_epochs = max_epochs
    cfg.train_cfg.val_interval = max_epochs
    cfg.param_scheduler[0].end = max_epochs
    cfg.custom_hooks = [dict(type='KWTemperatureHook', tau_epochs=1.5)]
    cfg.default_hooks.checkpoint.interval = 1  # the demo keeps only the last epoch
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    cfg.model.backbone.base_channels = 16
    cfg.model.backbone.stem_channels = 16
    cfg.model.head.in_channels = 128
    return cfg


def run(cfg, hooks):
    runner = Runner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    try:
        runner.train()
    except KeyboardInterrupt:
        pass
    return runner


@pytest.mark.slow
def test_train_interrupt_resume_continues_tau_lr_and_epoch(digits_root, tmp_path):
    reference = Recorder()
    run(demo_cfg(digits_root, tmp_path / 'reference'), [reference])
    total = 1.5 * ITERS_PER_EPOCH
    taus = [row[2] for row in reference.rows]
    assert taus[0] == pytest.approx(1 - 1 / total)  # the release's schedule: (t + 1) / T
    assert taus[2] == pytest.approx(1 - 3 / total)  # mid warm-up
    assert taus[5] == 0 and taus[-1] == 0  # end of warm-up, then held
    assert len(reference.rows) == 2 * ITERS_PER_EPOCH

    first = Recorder()
    run(demo_cfg(digits_root, tmp_path / 'killed'), [first, Interrupt(epoch=1)])
    assert len(first.rows) == ITERS_PER_EPOCH
    checkpoint = tmp_path / 'killed' / 'epoch_1.pth'
    # torch >= 2.6 loads with weights_only=True; mmkw allow-lists what mmengine saves
    state = torch.load(checkpoint)
    assert all(k.startswith(('backbone.', 'head.', 'neck.', 'data_preprocessor.'))
               for k in state['state_dict'])
    assert any(k.startswith('backbone.warehouse_manager.weights.') for k in state['state_dict'])
    assert not any('beta' in k for k in state['state_dict'])

    resumed = Recorder()
    cfg = demo_cfg(digits_root, tmp_path / 'killed')
    cfg.resume = True
    cfg.load_from = str(checkpoint)
    runner = run(cfg, [resumed])
    assert [row[:2] for row in resumed.rows] == [row[:2] for row in reference.rows[4:]]
    for got, want in zip(resumed.rows, reference.rows[ITERS_PER_EPOCH:]):
        assert got[2] == pytest.approx(want[2]) and got[3] == pytest.approx(want[3])
    assert runner.epoch == 2
    assert 'val/accuracy/top1' in runner.message_hub.log_scalars


def test_hook_rejects_bad_arguments():
    with pytest.raises(ValueError, match='exactly one of tau_epochs and tau_iters'):
        KWTemperatureHook()
    with pytest.raises(ValueError, match='positive'):
        KWTemperatureHook(tau_epochs=0)


@pytest.mark.slow
def test_dist_train_two_cpu_processes(digits_root, tmp_path):
    work_dir = tmp_path / 'dist'
    options = [
        f'train_dataloader.dataset.data_root={digits_root}',
        f'val_dataloader.dataset.data_root={digits_root}',
        f'test_dataloader.dataset.data_root={digits_root}',
        'train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=16',
        'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1', 'model.backbone.base_channels=16',
        'model.backbone.stem_channels=16', 'model.head.in_channels=128',
    ]
    env = dict(os.environ, PORT=str(29500 + os.getpid() % 1000), PYTHON=sys.executable)
    result = subprocess.run(
        ['bash', str(REPO / 'tools' / 'dist_train.sh'), str(DEMO), '2', '--work-dir',
         str(work_dir), '--cfg-options', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work_dir / 'epoch_1.pth').is_file()
    log = next(work_dir.glob('*/*.log')).read_text()
    # 32 images, 2 processes of batch 8: 2 iterations per process
    assert 'Epoch(train) [1][2/2]' in log and 'tau:' in log and 'accuracy/top1' in log
