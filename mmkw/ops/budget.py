"""Convolutional parameter budget of Kernel Warehouse (paper §3.3).

The budget ``b = n / mt`` relates the cells ``n`` of a warehouse to the mixtures ``mt`` of the
convs sharing it. The release expresses it as three ratios: ``cell_num_ratio`` (= b), and the
fractions of the greatest common in/out channel divisors that a cell spans. Budgets below one
use half-size cells (A.3), which quadruples ``mt`` so that ``n`` stays large.
"""
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Union

BudgetLike = Union[str, float, int, Mapping, 'Budget']


@dataclass(frozen=True)
class Budget:
    """Cell-count and cell-size ratios of one warehouse.

    Args:
        cell_num_ratio: ``b``: cells in the warehouse per mixture of its convs.
        cell_inplane_ratio: cell input channels as a fraction of the gcd of the convs' input
            channels (per group).
        cell_outplane_ratio: cell output channels as a fraction of the gcd of the convs'
            output channels.
    """
    cell_num_ratio: float = 1.0
    cell_inplane_ratio: float = 1.0
    cell_outplane_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ('cell_num_ratio', 'cell_inplane_ratio', 'cell_outplane_ratio'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f'Budget.{name} must be a positive number, got {value!r}')
        for name in ('cell_inplane_ratio', 'cell_outplane_ratio'):
            if getattr(self, name) > 1:
                raise ValueError(f'Budget.{name} must be <= 1 (a cell cannot span more '
                                 f'channels than the gcd of its convs), got {getattr(self, name)}')

    @property
    def b(self) -> float:
        return self.cell_num_ratio

    @classmethod
    def parse(cls, budget: BudgetLike) -> 'Budget':
        """Build a budget from a preset name (``'1/4x'``, ``'1/2x'``, ``'1x'``, ``'2x'``,
        ``'4x'``, or any ``'<ratio>x'``), a number ``b``, a dict of the three ratios, or a
        :class:`Budget`.

        Numbers follow the release: ``b >= 1`` keeps whole gcd cells, ``b < 1`` uses cells of
        half the gcd in both channel dimensions.
        """
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, Mapping):
            unknown = set(budget) - {'cell_num_ratio', 'cell_inplane_ratio', 'cell_outplane_ratio'}
            if unknown:
                raise ValueError(f'unknown budget keys {sorted(unknown)}; expected '
                                 'cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio')
            return cls(**budget)
        if isinstance(budget, str):
            text = budget.strip().lower()
            if not text.endswith('x'):
                raise ValueError(f"budget {budget!r} must look like '1x', '1/2x' or '0.25x'")
            try:
                b = float(Fraction(text[:-1]))
            except (ValueError, ZeroDivisionError):
                raise ValueError(
                    f"budget {budget!r} must look like '1x', '1/2x' or '0.25x'") from None
        elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
            b = float(budget)
        else:
            raise TypeError('budget must be a str, number, dict or Budget, got '
                            f'{type(budget).__name__}')
        if not b > 0:
            raise ValueError(f'budget must be positive, got {budget!r}')
        if b >= 1:
            return cls(b, 1.0, 1.0)
        return cls(b, 0.5, 0.5)
