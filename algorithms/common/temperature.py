"""The entropy temperature α of maximum-entropy agents (SAC, SAC-Discrete): fixed, or learned towards a
target entropy (Haarnoja et al. 2018, "SAC: Algorithms and Applications", §5)."""

from __future__ import annotations

import math

import torch

from algorithms.common.config import require_positive
from algorithms.common.errors import ConfigError
from algorithms.common.optim import FlatAdam


def learns_temperature(ent_coef: str | float) -> bool:
    """Whether α is learned: ``ent_coef`` is ``"auto"`` or ``"auto_<init>"`` (SB3's forms)."""
    return isinstance(ent_coef, str) and ent_coef.startswith("auto")


def initial_log_alpha(ent_coef: object, init_ent_coef: float) -> float:
    """log α at the start: ``init_ent_coef`` (or the ``x`` of ``"auto_x"``) when learned, else the fixed
    α; ConfigError naming the field for anything else."""
    error = f"ent_coef must be 'auto', 'auto_<float>' or a float > 0, got {ent_coef!r}"
    if isinstance(ent_coef, str):
        if ent_coef == "auto":
            init = init_ent_coef
        else:
            text = ent_coef[5:] if ent_coef.startswith("auto_") else ent_coef
            try:
                init = float(text)  # "auto_0.1", or a fixed α that arrived as text
            except ValueError:
                raise ConfigError(error) from None
        require_positive("init_ent_coef" if ent_coef.startswith("auto") else "ent_coef", init)
        return math.log(init)
    if isinstance(ent_coef, bool) or not isinstance(ent_coef, int | float):
        raise ConfigError(error)
    require_positive("ent_coef", ent_coef)
    return math.log(ent_coef)


class Temperature:
    """α = exp(log α), with its own Adam when learned.

    Args:
        ent_coef, init_ent_coef: as the configs' fields (:func:`initial_log_alpha`).
        target_entropy: the entropy H̄ (nats) the learned α steers the policy's towards.
        learning_rate: Adam step size of log α.
    """

    def __init__(
        self, ent_coef: str | float, init_ent_coef: float, target_entropy: float, learning_rate: float
    ) -> None:
        self.learned = learns_temperature(ent_coef)
        self.target_entropy = target_entropy
        self.log_alpha = torch.nn.Parameter(torch.tensor([initial_log_alpha(ent_coef, init_ent_coef)]))
        self.log_alpha.grad = torch.zeros(1)
        self.optimizer = FlatAdam(self.log_alpha, lr=learning_rate)

    def alpha(self) -> torch.Tensor:
        """The current α, a 0-d tensor outside the graph."""
        return self.log_alpha.detach()[0].exp()

    def update(self, mean_log_prob: torch.Tensor) -> torch.Tensor:
        """One step on the loss −log α · (E[log π] + H̄) when α is learned: its gradient
        −(E[log π] + H̄) = H(π) − H̄ lowers α while the policy's entropy is above the target and raises it
        below. ``mean_log_prob`` is E[log π] = −H(π) (detached). Returns E[log π] + H̄, the entropy gap."""
        entropy_gap = mean_log_prob + self.target_entropy
        if self.learned:
            self.log_alpha.grad.copy_(-entropy_gap)
            self.optimizer.step()
        return entropy_gap
