"""The CPU kernel library of dynamic convs: chosen by measurement, cached per machine,
overridable, and never a reason for a different result."""
import json

import pytest
import torch

from mmkw.ops import KWConv2d, WarehouseManager
from mmkw.ops import cpu_kernels as ck


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """No choice measured in this process yet, the cache in a temporary folder."""
    monkeypatch.setattr(ck, '_measured', None)
    monkeypatch.setenv('MMKW_CACHE', str(tmp_path))
    monkeypatch.delenv(ck.ENV_VAR, raising=False)
    return tmp_path / 'cpu_kernels.json'


def timings(train_winner, inference_winner):
    return {mode: {kernels: 0.1 if kernels == winner else 0.2 for kernels in ck.CPU_KERNELS}
            for mode, winner in (('train', train_winner), ('inference', inference_winner))}


def test_auto_takes_the_faster_library_per_mode_and_caches_it(fresh_choice, monkeypatch):
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('onednn', 'blas'))
    assert ck.cpu_kernels() == 'onednn'  # autograd records: training
    with torch.no_grad():
        assert ck.cpu_kernels() == 'blas'
    with torch.inference_mode():
        assert ck.cpu_kernels() == 'blas'
    cached = json.loads(fresh_choice.read_text())[ck.machine_key()]
    assert (cached['train'], cached['inference']) == ('onednn', 'blas')

    # a new process reads the cache instead of measuring again
    monkeypatch.setattr(ck, '_measured', None)

    def fail():
        raise AssertionError('measured again despite the cache')

    monkeypatch.setattr(ck, 'measure_cpu_kernels', fail)
    assert ck.cpu_kernels() == 'onednn'
    with torch.no_grad():
        assert ck.cpu_kernels() == 'blas'


def test_cache_of_another_machine_is_not_used(fresh_choice, monkeypatch):
    fresh_choice.write_text(json.dumps({'another CPU | avx2 | torch 0': {
        'train': 'onednn', 'inference': 'onednn'}}))
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('blas', 'blas'))
    assert ck.cpu_kernels() == 'blas'
    assert set(json.loads(fresh_choice.read_text())) == {'another CPU | avx2 | torch 0',
                                                         ck.machine_key()}


def test_unreadable_cache_is_measured_again(fresh_choice, monkeypatch):
    fresh_choice.write_text('{not json')
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('blas', 'onednn'))
    assert ck.cpu_kernels() == 'blas'


def test_environment_and_forced_choice_override_the_measurement(fresh_choice, monkeypatch):
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('onednn', 'onednn'))
    monkeypatch.setenv(ck.ENV_VAR, 'blas')
    assert ck.cpu_kernels() == 'blas'
    with ck.forced_cpu_kernels('onednn'):
        assert ck.cpu_kernels() == 'onednn'
    assert ck.cpu_kernels() == 'blas'
    assert not fresh_choice.exists()  # nothing was measured
    with pytest.raises(ValueError, match='kernels must be one of'):
        ck.forced_cpu_kernels('mkl')


@pytest.mark.slow
def test_measurement_times_both_libraries_in_both_modes():
    # as when a process's first KW conv runs in inference; the caller's random stream is kept
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with torch.inference_mode():
        seconds = ck.measure_cpu_kernels(rounds=1, warmup=0)
    torch.testing.assert_close(torch.rand(3), expected)
    assert set(seconds) == set(ck.MODES)
    for mode in ck.MODES:
        assert set(seconds[mode]) == set(ck.CPU_KERNELS)
        assert all(value > 0 for value in seconds[mode].values())
    # a training step does more than an inference forward
    assert seconds['train']['blas'] > seconds['inference']['blas']


def test_both_libraries_give_the_same_conv():
    manager = WarehouseManager('1x')
    owner = torch.nn.Module()
    owner.warehouse_manager = manager
    owner.conv = KWConv2d(32, 32, 3, padding=1, warehouse_manager=manager, warehouse_name='w')
    owner.depthwise = KWConv2d(32, 32, 3, padding=1, groups=32, warehouse_manager=manager,
                               warehouse_name='dw')
    manager.build(owner)
    x = torch.randn(4, 32, 14, 14)
    outputs = {}
    for kernels in ck.CPU_KERNELS:
        with ck.forced_cpu_kernels(kernels):
            outputs[kernels] = owner.depthwise(owner.conv(x))
    torch.testing.assert_close(outputs['blas'], outputs['onednn'], atol=1e-5, rtol=1e-5)
