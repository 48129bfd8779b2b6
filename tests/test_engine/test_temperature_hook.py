"""One temperature hook for every method: ODConv's and DY-Conv's T from 30 to 1 and KW's tau from
1 to 0, per iteration, from the runner's counter (so a resumed run continues), logged; and the
methods' final values when no hook runs (fine-tuning)."""
import pytest
from mmengine.logging import MessageHub

import mmkw  # noqa: F401
from mmkw.engine import KWTemperatureHook, TemperatureHook
from mmkw.models import DynamicResNet, KWResNet
from mmkw.ops import DynamicAttention, get_temperature


class FakeRunner:
    """What the hook reads from mmengine's Runner."""

    def __init__(self, model, iters_per_epoch=10, max_iters=100, load_from=None):
        self.model = model
        self._load_from = load_from
        self.train_dataloader = [None] * iters_per_epoch
        self.max_iters = max_iters
        self.iter = 0
        self.message_hub = MessageHub.get_instance('mmkw_test_temperature_hook')


def attentions(model):
    return [m for m in model.modules() if isinstance(m, DynamicAttention)]


@pytest.mark.parametrize('method', ['ODConv', 'DyConv'])
def test_peer_schedule_start_middle_end_and_resume(method):
    model = DynamicResNet(18, conv_cfg=dict(type=method, kernel_num=4))
    assert get_temperature(model) == 1.0, 'outside a run T is its final value'
    hook = TemperatureHook(epochs=2, start=30.0, end=1.0)
    runner = FakeRunner(model)
    hook.before_train(runner)
    assert hook.total_iters == 20
    seen = {}
    for it in (0, 9, 18, 19, 50):
        runner.iter = it
        hook.before_train_iter(runner, batch_idx=it % 10)
        seen[it] = get_temperature(model)
        assert all(m.temperature == seen[it] for m in attentions(model))
    # the ODConv release's T = 1 + (T0 - 1) * max(0, (N - it) / N) with it = t + 1
    assert seen[0] == pytest.approx(1 + 29 * 19 / 20)
    assert seen[9] == pytest.approx(1 + 29 * 10 / 20)
    assert seen[18] == pytest.approx(1 + 29 * 1 / 20)
    assert seen[19] == seen[50] == 1.0
    assert runner.message_hub.get_scalar('train/temperature').current() == 1.0
    # a resumed run: a fresh hook and model at iteration 9 continue with the same T
    resumed_model = DynamicResNet(18, conv_cfg=dict(type=method, kernel_num=4))
    resumed = FakeRunner(resumed_model)
    resumed.iter = 9
    fresh = TemperatureHook(epochs=2, start=30.0, end=1.0)
    fresh.before_train(resumed)
    fresh.before_train_iter(resumed, batch_idx=9)
    assert get_temperature(resumed_model) == seen[9]


def test_kw_hook_is_the_same_schedule_from_1_to_0():
    model = KWResNet(18, budget='1x')
    hook = KWTemperatureHook(tau_iters=4)
    runner = FakeRunner(model)
    hook.before_train(runner)
    values = []
    for it in range(5):
        runner.iter = it
        hook.before_train_iter(runner, batch_idx=it)
        values.append(get_temperature(model))
    assert values == pytest.approx([0.75, 0.5, 0.25, 0.0, 0.0])
    assert 'train/tau' in runner.message_hub.log_scalars


def test_a_schedule_outside_the_methods_range_is_refused():
    od = DynamicResNet(18, conv_cfg=dict(type='ODConv', kernel_num=4))
    with pytest.raises(ValueError, match=r'ODConvAttention takes temperatures in \[1.0, inf\]'):
        KWTemperatureHook(tau_epochs=1).before_train(FakeRunner(od))
    kw = KWResNet(18, budget='1x')
    with pytest.raises(ValueError, match=r'KWAttention takes temperatures in \[0.0, 1.0\]'):
        TemperatureHook(epochs=1, start=30, end=1).before_train(FakeRunner(kw))


def test_models_without_a_temperature_make_the_hook_a_no_op():
    from mmkw.models import KDNAResNet
    for model in (DynamicResNet(18), KDNAResNet(18), KWResNet(18, attention_init=None)):
        hook = TemperatureHook(epochs=1)
        hook.before_train(FakeRunner(model))
        assert not hook.enabled
