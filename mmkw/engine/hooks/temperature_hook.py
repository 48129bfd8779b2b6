"""Temperature schedule of the attention init strategy (paper Eq. 4, A.1)."""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseModule, is_model_wrapper
from mmengine.registry import HOOKS

from mmkw.ops import KWAttention, set_temperature


@HOOKS.register_module()
class KWTemperatureHook(Hook):
    """Move tau of every KW attention linearly from ``tau_start`` to 0, per iteration, over
    the first ``tau_epochs`` epochs (or ``tau_iters`` iterations), then hold 0.

    tau at global iteration ``t`` (0-based) is ``max(0, tau_start * (1 - (t + 1) / T))``, the
    release's schedule, computed from the runner's iteration counter: a resumed run continues
    where it stopped. tau is logged as ``tau``. During validation inside training the current
    tau is used, as in the release; outside a run tau is 0.

    Args:
        tau_epochs: warm-up length in epochs (the paper: 10 for the traditional and 20 for the
            advanced recipe).
        tau_iters: warm-up length in iterations, for iteration-based loops.
        tau_start: tau at the start (1 in the paper).
    """
    priority = 'NORMAL'

    def __init__(self, tau_epochs: Optional[float] = None, tau_iters: Optional[int] = None,
                 tau_start: float = 1.0) -> None:
        if (tau_epochs is None) == (tau_iters is None):
            raise ValueError('KWTemperatureHook needs exactly one of tau_epochs and tau_iters, '
                             f'got tau_epochs={tau_epochs}, tau_iters={tau_iters}')
        length = tau_epochs if tau_epochs is not None else tau_iters
        if not length > 0:
            raise ValueError(f'KWTemperatureHook warm-up length must be positive, got {length}')
        if not 0 <= tau_start <= 1:
            raise ValueError(f'tau_start must be in [0, 1], got {tau_start}')
        self.tau_epochs = tau_epochs
        self.tau_iters = tau_iters
        self.tau_start = tau_start
        self.total_iters: Optional[int] = None
        self.enabled = True

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def temperature(self, iteration: int) -> float:
        """tau used by the forward pass of global iteration ``iteration`` (0-based)."""
        return max(0.0, self.tau_start * (1 - (iteration + 1) / self.total_iters))

    def before_train(self, runner) -> None:
        model = self._model(runner)
        attentions = [m for m in model.modules() if isinstance(m, KWAttention)]
        active = [m for m in attentions if m.init_strategy]
        if not active:
            self.enabled = False
            print_log('KWTemperatureHook: no KW attention has the init strategy enabled '
                      '(attention_init=None); tau stays 0 and this hook does nothing',
                      logger='current', level=30)
            return
        pretrained = bool(runner._load_from) or any(
            isinstance(m, BaseModule) and isinstance(m.init_cfg, dict)
            and m.init_cfg.get('type') == 'Pretrained' for m in model.modules())
        if pretrained:
            print_log('KWTemperatureHook: the model loads pretrained weights but the KW init '
                      'strategy is enabled, so tau > 0 mixes the one-to-one beta into attentions '
                      'that were already learnt. The paper disables it for fine-tuning (A.1.2): '
                      "set attention_init=None in the backbone and drop this hook.",
                      logger='current', level=30)
        if self.tau_iters is not None:
            self.total_iters = int(self.tau_iters)
        else:
            self.total_iters = max(int(round(self.tau_epochs * len(runner.train_dataloader))), 1)
        if self.total_iters > runner.max_iters:
            print_log(f'KWTemperatureHook: the tau warm-up ({self.total_iters} iters) is longer '
                      f'than training ({runner.max_iters} iters); tau will not reach 0, and a '
                      'model evaluated later (tau = 0) will differ from the trained one',
                      logger='current', level=30)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.enabled:
            return
        tau = self.temperature(runner.iter)
        set_temperature(self._model(runner), tau)
        runner.message_hub.update_scalar('train/tau', tau)
