"""mmengine checkpoints load under torch's weights_only default, in a fresh process too, and
nothing beyond what mmengine saves is let through."""
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

import mmkw  # noqa: F401


def _message_hub_checkpoint(path):
    hub = MessageHub.get_instance('mmkw_checkpoint_test')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 0.1)
    torch.save({'message_hub': hub.state_dict(), 'meta': {'seed': np.int64(3)},
                'state_dict': {'w': torch.ones(2)}}, path)


def test_loads_in_a_fresh_process(tmp_path):
    path = tmp_path / 'ckpt.pth'
    _message_hub_checkpoint(path)
    code = ('import torch, mmkw; c = torch.load(%r); '
            "print(c['message_hub']['log_scalars']['train/loss'].mean())" % str(path))
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith('0.5')


def test_other_getattr_is_refused():

    class Sneaky:

        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    buffer = io.BytesIO()
    torch.save({'x': Sneaky()}, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match='only the statistics methods'):
        torch.load(buffer)
