"""The attention switches of the paper's ablations: attention functions and init strategies.

Attention function (§3.4, Eq. 4; ablated in Table 8, and across methods in Table 10). A KW
attention produces logits ``z`` of shape ``[B, m, n + 1]``; the last column belongs to the zero
cell ``e_z`` (A.2), which is never assembled. The function maps ``z`` to attentions, then
``alpha = (1 - tau) * f(z) + tau * beta`` and the zero-cell column is dropped:

* ``'caf'`` (the paper's contrasting-driven attention function, the default):
  ``z / (sum_j |z_j| + 1e-3)`` over all ``n + 1`` logits, as in the release; positive and
  negative attentions.
* ``'softmax'``: softmax over the ``n`` real cells only. The zero-cell logit is left out so
  that the attentions of a mixture are positive and sum to 1, as in DY-Conv (the "popular
  attention function" the paper compares with); the zero cell only matters to beta (b < 1).
* ``'sigmoid'``: elementwise ``sigmoid(z)``; positive, not normalised (the zero-cell column
  is dropped, so its logit has no effect).
* ``'relu_norm'``: ``max(z, 0) / (sum_j |z_j| + 1e-3)``, the paper's fourth row of Table 8:
  exactly CAF with its negative attentions set to 0 (same denominator, zero cell included),
  so this row isolates CAF's second design principle (negative attentions).

Init strategy (beta of Eq. 4; A.2, Figures 4-6, Tables 9 and 13). beta ``[m, n + 1]`` is what
the attentions equal at ``tau = 1``. The convs of a warehouse are visited in model order with a
running cell index ``start``; each conv *owns* (kaiming-initialises) the cells ``[start, end)``.

* ``'one_to_one'`` (the paper's strategy, default): see :func:`one_to_one_beta`.
* ``'all_to_one'`` (Table 13, "all the kernel cells to 1 linear mixture"): every beta_ij = 1
  for the ``n`` real cells ("setting all the beta_ij to be 1", A.2); beta stays binary as in
  Eq. 4, so at tau = 1 every mixture is the sum of all cells. Cell ownership follows the
  one-to-one walk (it only decides which conv's fan-out initialises a cell).
* ``'n_to_one'`` (b > 1, Table 13 "4 kernel cells to 1 linear mixture", Figure 5b): mixture
  ``i`` gets beta = 1 on its own ``b`` consecutive cells ``start + i*b .. start + i*b + b - 1``
  (several cells without repetition). beta stays binary (Eq. 4 defines beta_ij in {0, 1}), so at
  tau = 1 a mixture is the sum of its ``b`` cells. Needs a whole ``b > 1``.
* ``'one_to_n'`` (b < 1, Table 13 "1 kernel cell to 2 linear mixtures", Figure 6b): with
  ``r = 1 / b``, ``r`` consecutive mixtures ``i`` (in the release's order
  ``i = (s * G_out + o) * G_in + c``, so neighbouring input-channel groups) share the cell
  ``start + i // r``; the zero cell is not used. Needs a whole ``1 / b > 1`` dividing ``m``.
* ``None`` (or ``'none'``; Table 9 "without", Table 13 "without attentions initialization"):
  no beta; tau is held at 0. Ownership follows the one-to-one walk.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

CAF_EPS = 1e-3  # the release's epsilon in z / (sum|z| + eps)

ATTENTION_FUNCTIONS = ('caf', 'softmax', 'sigmoid', 'relu_norm')
ATTENTION_INITS = ('one_to_one', 'all_to_one', 'n_to_one', 'one_to_n', None)


def check_attention_function(name: str) -> str:
    """Return ``name`` if it is a known attention function, else raise a ValueError."""
    if name not in ATTENTION_FUNCTIONS:
        raise ValueError(f'attention_function must be one of {ATTENTION_FUNCTIONS}, got {name!r}')
    return name


def check_attention_init(name: Optional[str]) -> Optional[str]:
    """Normalise ``'none'`` to None and check that ``name`` is a known init strategy."""
    if name == 'none':
        return None
    if name not in ATTENTION_INITS:
        raise ValueError(f"attention_init must be one of {ATTENTION_INITS} (or 'none'), "
                         f'got {name!r}')
    return name


def apply_attention_function(z: torch.Tensor, name: str) -> torch.Tensor:
    """Attentions ``[B, m, n + 1]`` from logits ``z`` ``[B, m, n + 1]`` (the zero-cell column
    is kept so that beta can be mixed in; the caller drops it). See the module docstring."""
    if name == 'caf':
        return z / (z.abs().sum(dim=2, keepdim=True) + CAF_EPS)
    if name == 'softmax':
        return F.pad(torch.softmax(z[..., :-1], dim=2), (0, 1))
    if name == 'sigmoid':
        return torch.sigmoid(z)
    if name == 'relu_norm':
        return z.clamp(min=0) / (z.abs().sum(dim=2, keepdim=True) + CAF_EPS)
    raise ValueError(f'attention_function must be one of {ATTENTION_FUNCTIONS}, got {name!r}')


def whole(value: float) -> bool:
    """True if ``value`` is (numerically) a whole number."""
    return abs(value - round(value)) < 1e-6


def one_to_one_beta(num_mixtures: int, num_cells: int, start: int,
                    cell_num_ratio: float) -> Tuple[torch.Tensor, int]:
    """beta of the one-to-one init strategy (paper A.2) for one conv.

    Args:
        num_mixtures: m of the conv.
        num_cells: n of its warehouse.
        start: the first warehouse cell not yet owned by an earlier conv.
        cell_num_ratio: the budget b.

    Returns:
        ``beta`` of shape ``[m, n + 1]`` (the last column is the zero cell) and the next free
        cell index. With ``b >= 1`` mixture ``i`` owns cell ``start + i*b``; with ``b < 1`` and
        ``r = 1/b`` only mixtures with ``i % r == (i // r) % r`` own a cell (a diagonal
        pattern, Figure 6a) and the others are assigned the zero cell.
    """
    beta = torch.zeros(num_mixtures, num_cells + 1)
    if cell_num_ratio >= 1:
        step = int(cell_num_ratio)
        for i in range(num_mixtures):
            beta[i, start] = 1
            start += step
    else:
        r = int(round(1 / cell_num_ratio))
        for i in range(num_mixtures):
            if i % r == (i // r) % r:
                beta[i, start] = 1
                start += 1
            else:
                beta[i, num_cells] = 1
    return beta, start


def init_beta(strategy: Optional[str], num_mixtures: int, num_cells: int, start: int,
              cell_num_ratio: float, where: str = '') -> Tuple[torch.Tensor, int]:
    """beta ``[m, n + 1]`` of one conv under ``strategy`` and the end of the cells it owns.

    ``where`` names the conv/warehouse in error messages. See the module docstring.
    """
    b = cell_num_ratio
    m, n = num_mixtures, num_cells
    if strategy == 'n_to_one':
        if not (b > 1 and whole(b)):
            raise ValueError(f"{where}attention_init='n_to_one' assigns b cells to each mixture "
                             f'and needs a whole budget b > 1 (e.g. 4x), got b={b}')
        step = int(round(b))
        beta = torch.zeros(m, n + 1)
        for i in range(m):
            beta[i, start + i * step:start + (i + 1) * step] = 1
        return beta, start + m * step
    if strategy == 'one_to_n':
        r = round(1 / b)
        if not (b < 1 and whole(1 / b)):
            raise ValueError(f"{where}attention_init='one_to_n' shares each cell among 1/b "
                             f'mixtures and needs b < 1 with 1/b whole (e.g. 1/2x), got b={b}')
        if m % r:
            raise ValueError(f"{where}attention_init='one_to_n' with 1/b={r} needs a mixture "
                             f'count divisible by {r}, got m={m}')
        beta = torch.zeros(m, n + 1)
        for i in range(m):
            beta[i, start + i // r] = 1
        return beta, start + m // r
    if strategy == 'one_to_one' or whole(b if b >= 1 else 1 / b):
        # None and 'all_to_one' own cells as the one-to-one walk does (unchanged init).
        beta, end = one_to_one_beta(m, n, start, b)
    else:
        # No whole ratio (only reachable without beta): own a proportional share; build()
        # initialises whatever is left over.
        beta, end = torch.zeros(m, n + 1), min(n, start + int(m * b))
    if strategy == 'all_to_one':
        beta = torch.zeros(m, n + 1)
        beta[:, :n] = 1
    return beta, end
