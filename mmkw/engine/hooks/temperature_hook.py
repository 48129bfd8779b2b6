"""Temperature schedules of the dynamic-conv attentions, for every method.

- KW (paper Eq. 4, A.1): tau from 1 to 0 over the first 10 (traditional recipe) or 20 (advanced)
  epochs, mixing the init strategy's beta into the attentions.
- ODConv and DY-Conv (their papers; ``../shared/notes/peers_format.md`` §2-3): the softmax
  temperature T from 30 to 1 over the first 10 epochs.

Both releases move the value linearly per iteration; at global iteration ``t`` (0-based) it is
``end + (start - end) * max(0, 1 - (t + 1) / N)``, which is the KW release's
``tau_start * (1 - (t + 1) / N)`` clipped at 0 and the ODConv release's
``1 + (T0 - 1) * max(0, (N - it) / N)`` with ``it = t + 1``.
"""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseModule, is_model_wrapper
from mmengine.registry import HOOKS

from mmkw.ops import DynamicAttention, set_temperature


@HOOKS.register_module()
class TemperatureHook(Hook):
    """Move the temperature of every dynamic-conv attention linearly from ``start`` to ``end``
    over the first ``epochs`` epochs (or ``iters`` iterations), per iteration, then hold
    ``end``.

    The value is computed from the runner's iteration counter, so a resumed run continues where
    it stopped, and logged as ``train/<log_name>``. During validation inside training the
    current value is used, as in the releases; outside a run every attention holds its method's
    final value (KW: tau = 0, ODConv/DY-Conv: T = 1), which is what fine-tuning uses: drop the
    hook there (the hook warns when it meets pretrained weights).

    Args:
        epochs: warm-up length in epochs.
        iters: warm-up length in iterations, for iteration-based loops.
        start: the value at the start (KW: 1, ODConv/DY-Conv: 30).
        end: the value after the warm-up (KW: 0, ODConv/DY-Conv: 1).
        log_name: name of the logged scalar.
    """
    priority = 'NORMAL'
    _length_args = ('epochs', 'iters')

    def __init__(self, epochs: Optional[float] = None, iters: Optional[int] = None,
                 start: float = 30.0, end: float = 1.0, log_name: str = 'temperature') -> None:
        name = type(self).__name__
        if (epochs is None) == (iters is None):
            in_epochs, in_iters = self._length_args
            raise ValueError(f'{name} needs exactly one of {in_epochs} and {in_iters}, got '
                             f'{in_epochs}={epochs}, {in_iters}={iters}')
        length = epochs if epochs is not None else iters
        if not length > 0:
            raise ValueError(f'{name} warm-up length must be positive, got {length}')
        self.epochs = epochs
        self.iters = iters
        self.start = float(start)
        self.end = float(end)
        self.log_name = log_name
        self.total_iters: Optional[int] = None
        self.enabled = True

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def temperature(self, iteration: int) -> float:
        """The value used by the forward pass of global iteration ``iteration`` (0-based)."""
        progress = max(0.0, 1 - (iteration + 1) / self.total_iters)
        return self.end + (self.start - self.end) * progress

    def before_train(self, runner) -> None:
        name = type(self).__name__
        model = self._model(runner)
        attentions = [m for m in model.modules() if isinstance(m, DynamicAttention)]
        active = [m for m in attentions if m.temperature_enabled]
        if not active:
            self.enabled = False
            why = ('no attention has its temperature schedule enabled (KW: attention_init=None)'
                   if attentions else 'the model has no attention with a temperature (e.g. a '
                   'plain or KernelDNA backbone)')
            print_log(f'{name}: {why}; the temperature stays at its final value and this hook '
                      'does nothing', logger='current', level=30)
            return
        for attention in {type(m): m for m in active}.values():
            for value in (self.start, self.end):
                low, high = attention.temperature_range
                if not low <= value <= high:
                    raise ValueError(
                        f'{name}(start={self.start}, end={self.end}): {type(attention).__name__} '
                        f'takes temperatures in [{low}, {high}] (its final value is '
                        f'{attention.final_temperature}); use the schedule of its method')
        pretrained = bool(runner._load_from) or any(
            isinstance(m, BaseModule) and isinstance(m.init_cfg, dict)
            and m.init_cfg.get('type') == 'Pretrained' for m in model.modules())
        if pretrained:
            print_log(f'{name}: the model loads pretrained weights but its attention '
                      'temperature schedule is enabled, so the warm-up changes attentions that '
                      'were already learnt. KW disables it for fine-tuning (A.1.2: set '
                      'attention_init=None in the backbone) and ODConv/DY-Conv fine-tune at '
                      'T = 1: drop this hook.',
                      logger='current', level=30)
        if self.iters is not None:
            self.total_iters = int(self.iters)
        else:
            self.total_iters = max(int(round(self.epochs * len(runner.train_dataloader))), 1)
        if self.total_iters > runner.max_iters:
            print_log(f'{name}: the warm-up ({self.total_iters} iters) is longer than training '
                      f'({runner.max_iters} iters); the temperature will not reach {self.end}, '
                      'and a model evaluated later (at the final value) will differ from the '
                      'trained one', logger='current', level=30)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.enabled:
            return
        value = self.temperature(runner.iter)
        set_temperature(self._model(runner), value)
        runner.message_hub.update_scalar(f'train/{self.log_name}', value)


@HOOKS.register_module()
class KWTemperatureHook(TemperatureHook):
    """KW's schedule (paper Eq. 4, A.1): tau from ``tau_start`` (1) to 0 over the first
    ``tau_epochs`` epochs (10 for the traditional and 20 for the advanced recipe) or
    ``tau_iters`` iterations; logged as ``tau``. See :class:`TemperatureHook`."""
    _length_args = ('tau_epochs', 'tau_iters')

    def __init__(self, tau_epochs: Optional[float] = None, tau_iters: Optional[int] = None,
                 tau_start: float = 1.0) -> None:
        if not 0 <= tau_start <= 1:
            raise ValueError(f'tau_start must be in [0, 1], got {tau_start}')
        super().__init__(epochs=tau_epochs, iters=tau_iters, start=tau_start, end=0.0,
                         log_name='tau')
        self.tau_epochs = tau_epochs
        self.tau_iters = tau_iters
        self.tau_start = tau_start
