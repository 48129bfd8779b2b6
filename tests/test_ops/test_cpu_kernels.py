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
    monkeypatch.setattr(ck, '_measured_matmul', None)
    monkeypatch.setenv('MMKW_CACHE', str(tmp_path))
    monkeypatch.delenv(ck.ENV_VAR, raising=False)
    monkeypatch.delenv(ck.MATMUL_ENV_VAR, raising=False)
    monkeypatch.setattr(ck, 'measure_matmul_kernels', lambda: timings('blas', 'onednn'))
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
    # the matmul library was measured first, on its own, and cached beside it
    assert (cached['matmul']['train'], cached['matmul']['inference']) == ('blas', 'onednn')
    assert ck.matmul_kernels() == 'blas'
    with torch.no_grad():
        assert ck.matmul_kernels() == 'onednn'

    # a new process reads the cache instead of measuring again
    monkeypatch.setattr(ck, '_measured', None)
    monkeypatch.setattr(ck, '_measured_matmul', None)

    def fail():
        raise AssertionError('measured again despite the cache')

    monkeypatch.setattr(ck, 'measure_cpu_kernels', fail)
    monkeypatch.setattr(ck, 'measure_matmul_kernels', fail)
    assert ck.cpu_kernels() == 'onednn'
    assert ck.matmul_kernels() == 'blas'
    with torch.no_grad():
        assert ck.cpu_kernels() == 'blas'
        assert ck.matmul_kernels() == 'onednn'


def test_the_path_probe_runs_with_the_measured_matmul_library(fresh_choice, monkeypatch):
    seen = []

    def measure_paths():
        seen.append(ck.matmul_kernels())
        return timings('blas', 'blas')

    monkeypatch.setattr(ck, 'measure_cpu_kernels', measure_paths)
    monkeypatch.setattr(ck, 'measure_matmul_kernels', lambda: timings('onednn', 'onednn'))
    assert ck.cpu_kernels() == 'blas'
    assert seen == ['onednn']


def test_paths_timed_with_another_matmul_library_are_measured_again(fresh_choice, monkeypatch):
    # as cached by an mmkw that had one choice for both, or with MMKW_MATMUL_KERNELS forced
    fresh_choice.write_text(json.dumps({ck.machine_key(): {
        'train': 'onednn', 'inference': 'onednn',
        'matmul': {'train': 'blas', 'inference': 'onednn'}}}))
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('blas', 'blas'))
    assert ck.cpu_kernels() == 'blas'
    assert ck.matmul_kernels() == 'blas'  # the cached matmul choice stands
    entry = json.loads(fresh_choice.read_text())[ck.machine_key()]
    assert entry['probe_matmul'] == {'train': 'blas', 'inference': 'onednn'}

    monkeypatch.setattr(ck, '_measured', None)
    monkeypatch.setenv(ck.MATMUL_ENV_VAR, 'onednn')
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('onednn', 'blas'))
    assert ck.cpu_kernels() == 'onednn'


def test_cache_of_another_machine_is_not_used(fresh_choice, monkeypatch):
    fresh_choice.write_text(json.dumps({'another CPU | avx2 | torch 0': {
        'train': 'onednn', 'inference': 'onednn'}}))
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('blas', 'blas'))
    assert ck.cpu_kernels() == 'blas'
    assert set(json.loads(fresh_choice.read_text())) == {'another CPU | avx2 | torch 0',
                                                         ck.machine_key()}


def test_instruction_set_caps_of_the_libraries_are_part_of_the_machine(monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX2 runs an AVX-512 machine's convolutions as an AVX2 machine's:
    # a choice measured without the cap does not hold under it
    for var in ck.ISA_CAP_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    uncapped = ck.machine_key()
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
    assert ck.machine_key() != uncapped
    assert 'ONEDNN_MAX_CPU_ISA=AVX2' in ck.machine_key()


def test_unreadable_cache_is_measured_again(fresh_choice, monkeypatch):
    fresh_choice.write_text('{not json')
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('blas', 'onednn'))
    assert ck.cpu_kernels() == 'blas'


def test_environment_and_forced_choice_override_the_measurement(fresh_choice, monkeypatch):
    monkeypatch.setattr(ck, 'measure_cpu_kernels', lambda: timings('onednn', 'onednn'))
    monkeypatch.setattr(ck, 'measure_matmul_kernels', lambda: timings('onednn', 'onednn'))
    monkeypatch.setenv(ck.ENV_VAR, 'blas')
    monkeypatch.setenv(ck.MATMUL_ENV_VAR, 'blas')
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('blas', 'blas')
    with ck.forced_cpu_kernels('onednn'):
        assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'blas')
        with ck.forced_cpu_kernels(None, matmul='onednn'):
            assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'onednn')
        assert ck.matmul_kernels() == 'blas'
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('blas', 'blas')
    assert not fresh_choice.exists()  # nothing was measured
    with pytest.raises(ValueError, match='kernels must be one of'):
        ck.forced_cpu_kernels('mkl')
    with pytest.raises(ValueError, match='matmul must be one of'):
        ck.forced_cpu_kernels(None, matmul='mkl')


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


def test_matmul_measurement_times_both_libraries_in_both_modes():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with torch.inference_mode():
        seconds = ck.measure_matmul_kernels(rounds=1, warmup=0)
    torch.testing.assert_close(torch.rand(3), expected)
    for mode in ck.MODES:
        assert set(seconds[mode]) == set(ck.CPU_KERNELS)
        assert all(value > 0 for value in seconds[mode].values())


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
        for matmul in ck.CPU_KERNELS:
            with ck.forced_cpu_kernels(kernels, matmul):
                outputs[kernels, matmul] = owner.depthwise(owner.conv(x))
    for output in outputs.values():
        torch.testing.assert_close(output, outputs['blas', 'blas'], atol=1e-5, rtol=1e-5)
