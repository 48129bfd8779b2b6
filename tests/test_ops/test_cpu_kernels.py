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
    monkeypatch.delenv(ck.MATMUL_ENV_VAR, raising=False)
    return tmp_path / 'cpu_kernels.json'


def timings(train_winner, inference_winner, measured=None):
    """A stand-in for measure_cpu_kernels: the winners, (paths, matmul) pairs, take 0.1 s; the
    pairs of every call are appended to ``measured``."""
    def measure(pairs):
        if measured is not None:
            measured.append(pairs)
        return {mode: {ck._pair_name(pair): 0.1 if pair == winner else 0.2 for pair in pairs}
                for mode, winner in (('train', train_winner), ('inference', inference_winner))}
    return measure


def test_auto_takes_the_fastest_pair_per_mode_and_caches_it(fresh_choice, monkeypatch):
    measured = []
    monkeypatch.setattr(ck, 'measure_cpu_kernels',
                        timings(('onednn', 'onednn'), ('blas', 'onednn'), measured))
    # autograd records: training
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'onednn')
    with torch.no_grad():
        assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('blas', 'onednn')
    with torch.inference_mode():
        assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('blas', 'onednn')
    # one measurement of all four pairs for both choices
    assert measured == [ck.ALL_PAIRS]
    entry = json.loads(fresh_choice.read_text())[ck.machine_key()]
    (section, cached), = entry.items()
    assert (cached['train'], cached['inference']) == ('paths onednn, matmul onednn',
                                                      'paths blas, matmul onednn')
    assert set(cached['seconds']['train']) == {ck._pair_name(pair) for pair in measured[0]}

    # a new process reads the cache instead of measuring again
    monkeypatch.setattr(ck, '_measured', None)

    def fail(pairs):
        raise AssertionError('measured again despite the cache')

    monkeypatch.setattr(ck, 'measure_cpu_kernels', fail)
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'onednn')
    with torch.no_grad():
        assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('blas', 'onednn')


def test_a_fixed_library_leaves_the_other_to_measure(fresh_choice, monkeypatch):
    measured = []
    monkeypatch.setattr(ck, 'measure_cpu_kernels',
                        timings(('onednn', 'blas'), ('blas', 'blas'), measured))
    monkeypatch.setenv(ck.MATMUL_ENV_VAR, 'blas')
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'blas')
    assert measured == [(('blas', 'blas'), ('onednn', 'blas'))]

    # the choice among fewer pairs does not stand for the full one, nor the other way round
    monkeypatch.setattr(ck, '_measured', None)
    monkeypatch.delenv(ck.MATMUL_ENV_VAR)
    monkeypatch.setattr(ck, 'measure_cpu_kernels',
                        timings(('onednn', 'onednn'), ('blas', 'blas'), measured))
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'onednn')
    assert len(measured) == 2 and len(measured[1]) == 4
    assert len(json.loads(fresh_choice.read_text())[ck.machine_key()]) == 2


def test_cache_of_an_older_mmkw_is_measured_again(fresh_choice, monkeypatch):
    # one entry per library, as cached before the two were measured as a pair
    fresh_choice.write_text(json.dumps({ck.machine_key(): {
        'train': 'blas', 'inference': 'blas',
        'matmul': {'train': 'blas', 'inference': 'blas'}}}))
    monkeypatch.setattr(ck, 'measure_cpu_kernels',
                        timings(('onednn', 'onednn'), ('onednn', 'blas')))
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('onednn', 'onednn')


def test_cache_of_another_machine_is_not_used(fresh_choice, monkeypatch):
    fresh_choice.write_text(json.dumps({'another CPU | avx2 | torch 0': {
        'train': 'onednn', 'inference': 'onednn'}}))
    monkeypatch.setattr(ck, 'measure_cpu_kernels', timings(('blas', 'blas'), ('blas', 'blas')))
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
    monkeypatch.setattr(ck, 'measure_cpu_kernels', timings(('blas', 'onednn'), ('blas', 'blas')))
    assert (ck.cpu_kernels(), ck.matmul_kernels()) == ('blas', 'onednn')


def test_environment_and_forced_choice_override_the_measurement(fresh_choice, monkeypatch):
    monkeypatch.setattr(ck, 'measure_cpu_kernels',
                        timings(('onednn', 'onednn'), ('onednn', 'onednn')))
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
def test_measurement_times_every_pair_in_both_modes():
    # as when a process's first KW conv runs in inference; the caller's random stream is kept
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with torch.inference_mode():
        seconds = ck.measure_cpu_kernels(rounds=1, warmup=0)
    torch.testing.assert_close(torch.rand(3), expected)
    assert set(seconds) == set(ck.MODES)
    pairs = {ck._pair_name(pair) for pair in ck.ALL_PAIRS}
    for mode in ck.MODES:
        assert set(seconds[mode]) == pairs
        assert all(value > 0 for value in seconds[mode].values())
    # a training step does more than an inference forward
    name = ck._pair_name(('blas', 'blas'))
    assert seconds['train'][name] > seconds['inference'][name]
    # fewer pairs where a library is fixed
    assert set(ck.measure_cpu_kernels(rounds=1, warmup=0, pairs=(('blas', 'onednn'),))[
        'train']) == {ck._pair_name(('blas', 'onednn'))}


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


def test_inference_matmuls_take_the_clearly_faster_library_by_shape(fresh_choice, monkeypatch):
    # measured pair: oneDNN matmuls; a shape leaves them only for BLAS 1.25x faster alone
    monkeypatch.setattr(ck, 'measure_cpu_kernels',
                        timings(('onednn', 'onednn'), ('blas', 'onednn')))
    monkeypatch.setattr(ck, '_inference_matmuls', {})
    monkeypatch.setattr(ck, 'MATMUL_TIMING_MIN_MACS', 50000)
    blas_seconds = {(32, 24, 600): 0.5, (32, 24, 700): 0.9}
    timed = []

    def time_products(products, a, b):
        timed.append(tuple(a.shape) + (b.shape[1], ))
        return {'onednn': 1.0, 'blas': blas_seconds[timed[-1]]}

    monkeypatch.setattr(ck, '_time_products', time_products)
    products = dict.fromkeys(ck.CPU_KERNELS, torch.mm)
    a, b600, b700 = torch.randn(32, 24), torch.randn(24, 600), torch.randn(24, 700)
    with torch.no_grad():
        assert ck.matmul_library(a, b600, products) == 'blas'
        assert ck.matmul_library(a, b700, products) == 'onednn'  # 1.1x: within the margin
        assert ck.matmul_library(a, b600, products) == 'blas'  # timed once per shape
        assert ck.matmul_library(a, b600[:, :20], products) == 'onednn'  # too small to time
    assert timed == [(32, 24, 600), (32, 24, 700)]
    assert ck.choices_in_effect()['inference_matmuls_by_shape'] == {
        '32 x 24 x 600 torch.float32': 'blas', '32 x 24 x 700 torch.float32': 'onednn'}
    # training keeps the pair's library, as do a fixed library and a probe
    assert ck.matmul_library(a, b600, products) == 'onednn'
    with torch.no_grad(), ck.forced_cpu_kernels(None, matmul='onednn'):
        assert ck.matmul_library(a, b600, products) == 'onednn'
    monkeypatch.setenv(ck.MATMUL_ENV_VAR, 'onednn')
    with torch.no_grad():
        assert ck.matmul_library(a, b600, products) == 'onednn'
    assert len(timed) == 2


def test_timing_a_matmul_is_invisible_to_flop_counters(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from mmkw.ops import per_sample_conv as psc
    monkeypatch.setattr(ck, '_inference_matmuls', {})
    monkeypatch.setattr(ck, 'MATMUL_TIMING_MIN_MACS', 0)
    monkeypatch.setattr(ck, '_forced_matmul', None)
    monkeypatch.delenv(ck.MATMUL_ENV_VAR, raising=False)
    monkeypatch.setattr(ck, 'matmul_kernels', lambda: 'onednn')
    a, b = torch.randn(40, 24), torch.randn(24, 300)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = psc.matmul2d(a, b)
    assert len(ck._inference_matmuls) == 1  # it was timed, in the counter's scope
    assert counter.get_total_flops() == 2 * 40 * 24 * 300
    torch.testing.assert_close(out, a @ b, atol=1e-5, rtol=1e-5)
