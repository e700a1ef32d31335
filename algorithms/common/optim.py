"""Parameters in one flat buffer, and Adam on that buffer.

For networks of a few thousand weights, per-tensor and per-call overhead costs more than arithmetic.
After :func:`flatten_parameters`, each parameter (and its ``.grad``) is a view into one contiguous
tensor, so clipping and the optimizer touch one tensor instead of many. :class:`FlatAdam` is Adam
(Kingma & Ba 2015, with PyTorch's ε placement) on such a buffer; torch.optim.Adam computes the same
update, but its per-parameter bookkeeping costs several times the arithmetic of a small PPO. The
update itself is ATen's fused Adam kernel (one pass over the buffer instead of seven elementwise ops),
called directly on the flat buffer. `bench/kernels.py` times both (bench/results/kernels.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from torch import nn

# ATen's single-pass Adam over a list of tensors (what torch.optim.Adam(fused=True) calls on CPU).
_FUSED_ADAM = getattr(torch.ops.aten, "_fused_adam_", None)


def flatten_parameters(params: Iterable[nn.Parameter]) -> nn.Parameter:
    """Re-home ``params`` and their gradients into one flat parameter and return it.

    Gradients accumulate in place into the flat ``.grad``; reset them with ``flat.grad.zero_()``, never
    with ``zero_grad(set_to_none=True)`` on the module (that would detach the views).
    """
    params = [p for p in params if p.requires_grad]
    total = sum(p.numel() for p in params)
    flat = nn.Parameter(torch.zeros(total))
    flat.grad = torch.zeros(total)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[offset : offset + n].copy_(p.reshape(-1))
            p.data = flat.data[offset : offset + n].view_as(p)
            p.grad = flat.grad[offset : offset + n].view_as(p)
            offset += n
    return flat


class FlatAdam:
    """Adam on one flat parameter tensor, with global-norm gradient clipping folded into the step.

    Args:
        param: the flat parameter from :func:`flatten_parameters` (its ``.grad`` is read and zeroed).
        lr: step size; may be changed between steps through :attr:`lr`.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator, after the bias-corrected square root (as torch.optim.Adam).
        max_grad_norm: clip the gradient's L2 norm to this before the step (None: no clipping).
    """

    def __init__(
        self,
        param: nn.Parameter,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float | None = None,
    ) -> None:
        self.param = param
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.max_grad_norm = max_grad_norm
        self.exp_avg = torch.zeros_like(param.data)
        self.exp_avg_sq = torch.zeros_like(param.data)
        self._step = torch.zeros(())  # the fused kernel reads the step count from a tensor

    @property
    def step_count(self) -> int:
        """Adam steps taken so far (drives the bias corrections)."""
        return int(self._step)

    @torch.no_grad()
    def step(self) -> None:
        """Clip, apply one Adam update from ``param.grad``, then zero the gradient."""
        grad = self.param.grad
        if self.max_grad_norm is not None:
            norm = torch.linalg.vector_norm(grad)
            grad.mul_(torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0))
        self._step += 1
        adam_update(self.param.data, grad, self.exp_avg, self.exp_avg_sq, self._step, self.lr, self)
        grad.zero_()

    def state_dict(self) -> dict[str, torch.Tensor | float | int]:
        """Moments, step count and learning rate, for saving (tensors and numbers only)."""
        return {
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "step": self.step_count,
            "lr": self.lr,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor | float | int]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.exp_avg.copy_(state["exp_avg"])  # type: ignore[arg-type]
        self.exp_avg_sq.copy_(state["exp_avg_sq"])  # type: ignore[arg-type]
        self._step.fill_(int(state["step"]))  # type: ignore[arg-type]
        self.lr = float(state["lr"])  # type: ignore[arg-type]


def flatten_by_member(params: Sequence[nn.Parameter], n_members: int) -> nn.Parameter:
    """Re-home the parameters of ``n_members`` stacked members into one flat buffer, member by member.

    Each parameter's first dimension holds either one row per member (shape (K, ...)) or the same
    number ``u`` of rows per member, member-major (shape (u·K, ...), e.g. the actor and critic of every
    member of a :class:`~algorithms.common.networks.StackedMLP`). The buffer is ``u·K`` blocks of equal
    size, and every parameter keeps its shape as a strided view into it, so the layers still run as
    batched matmuls; viewed as (K, -1), each row of the buffer is one member's weights, which makes
    per-member clipping and optimizer steps single broadcast operations. Space a (K, ...) parameter
    takes in the blocks of rows ``1 … u-1`` stays zero. Gradients are re-homed the same way.
    """
    params = [p for p in params if p.requires_grad]
    units = max(p.shape[0] for p in params)
    if units % n_members or any(p.shape[0] not in (n_members, units) for p in params):
        raise ValueError(f"every parameter needs {n_members} or {units} rows in its first dimension")
    offsets, block = [], 0
    for p in params:
        offsets.append(block)
        block += p[0].numel()
    flat = nn.Parameter(torch.zeros(units * block))
    flat.grad = torch.zeros(units * block)
    with torch.no_grad():
        for p, offset in zip(params, offsets, strict=True):
            row_stride = block if p.shape[0] == units else block * (units // n_members)
            inner = torch.empty(p.shape[1:]).stride()
            size, stride = p.shape, (row_stride, *inner)
            view = flat.data.as_strided(size, stride, offset)
            view.copy_(p)
            p.data = view
            p.grad = flat.grad.as_strided(size, stride, offset)
    return flat


class MemberAdam:
    """Adam on a flat buffer that holds the weights of ``K`` independent members, one row each.

    Every member has its own learning rate, gradient-norm clip, moment estimates and step count, so
    one member's update is what :class:`FlatAdam` on that member's weights alone does (up to the
    rounding of the clip factor). The buffer comes from :func:`flatten_by_member`; a member is a row of
    ``param.view(K, -1)``. Each active member's row goes through the same fused Adam kernel as
    FlatAdam: one pass over its weights, where a broadcast formulation would make ~20 passes over all.

    Args:
        param: the flat parameter.
        n_members: K.
        betas: decay rates of the moment estimates (shared).
        eps: added to the denominator (shared).
        accumulated: the gradients (views into ``param.grad``) that backward adds to, zeroed after each
            step; None: the whole buffer. A network that writes its gradients afresh on every backward
            (``StackedMLP(write_grads=True)``) leaves only its other parameters' here, often none.
    """

    def __init__(
        self,
        param: nn.Parameter,
        n_members: int,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        accumulated: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.param = param
        self.n_members = n_members
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.rows = param.data.view(n_members, -1)
        self.grad_rows = param.grad.view(n_members, -1)
        self.lr = torch.zeros(n_members, 1)
        """Step size per member (K, 1); 0 freezes a member's weights."""
        self.max_grad_norm = torch.full((n_members, 1), math.inf)
        """Gradient L2-norm clip per member (K, 1); inf: no clipping."""
        self.steps = torch.zeros(n_members)
        """Adam steps each member has taken (drive its bias corrections)."""
        self.exp_avg = torch.zeros_like(self.rows)
        self.exp_avg_sq = torch.zeros_like(self.rows)
        self._accumulated = (param.grad,) if accumulated is None else tuple(accumulated)
        self._clip_divisor = torch.ones(n_members)
        # Each member's tensors as views made once: indexing in the step loop costs microseconds a call.
        self._member_views = tuple(
            (self.rows[k], self.grad_rows[k], self.exp_avg[k], self.exp_avg_sq[k], self.steps[k],
             self._clip_divisor[k])
            for k in range(n_members)
        )  # fmt: skip

    def reset_member(self, member: int) -> None:
        """Forget member ``member``'s moments and step count (a fresh optimizer for a new member)."""
        self.exp_avg[member] = 0.0
        self.exp_avg_sq[member] = 0.0
        self.steps[member] = 0.0

    @torch.no_grad()
    def copy_member(self, target: int, source: int) -> None:
        """Give member ``target`` member ``source``'s weights, moments, step count, learning rate and
        gradient clip (population-based training's exploit); ``source`` is not changed."""
        self.rows[target] = self.rows[source]
        self.exp_avg[target] = self.exp_avg[source]
        self.exp_avg_sq[target] = self.exp_avg_sq[source]
        self.steps[target] = self.steps[source]
        self.lr[target] = self.lr[source]
        self.max_grad_norm[target] = self.max_grad_norm[source]

    def grad_norms(self) -> torch.Tensor:
        """The L2 norm of each member's gradient, shape (K,)."""
        return torch.linalg.vector_norm(self.grad_rows, dim=1)

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """Clip each active member's gradient to its norm limit, update the members where ``active``
        (bool, (K,)), then zero the gradients that backward accumulates into.

        An inactive member's weights, moments and step count stay exactly as they were, whatever its
        gradient holds (NaN from a diverged loss included).
        """
        # Clipping multiplies a gradient by min(limit / (norm + 1e-6), 1); the fused kernel divides by
        # the inverse as it reads the gradient, which saves a separate pass over every member's row.
        divisor = (self.grad_norms() + 1e-6) / self.max_grad_norm.view(-1)
        torch.clamp(divisor, min=1.0, out=self._clip_divisor)
        self.steps += active
        lrs = self.lr.view(-1).tolist()
        for k in torch.nonzero(active).view(-1).tolist():
            row, grad, exp_avg, exp_avg_sq, step, clip_divisor = self._member_views[k]
            adam_update(row, grad, exp_avg, exp_avg_sq, step, lrs[k], self, clip_divisor)
        for grad in self._accumulated:
            grad.zero_()


class _AdamHyperparameters(Protocol):
    beta1: float
    beta2: float
    eps: float


def adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    lr: float,
    hp: _AdamHyperparameters,
    grad_divisor: torch.Tensor | None = None,
) -> None:
    """One Adam step of ``param`` (in place) whose ``step`` count was already incremented: ATen's fused
    kernel where the build has it, else the same update in plain tensor ops.

    With ``grad_divisor`` (a one-element tensor), the gradient is first divided by it, in place.
    """
    if _FUSED_ADAM is not None:
        _FUSED_ADAM(
            [param], [grad], [exp_avg], [exp_avg_sq], [], [step], lr=lr, beta1=hp.beta1, beta2=hp.beta2,
            weight_decay=0.0, eps=hp.eps, amsgrad=False, maximize=False, grad_scale=grad_divisor,
        )  # fmt: skip
        return
    if grad_divisor is not None:
        grad.div_(grad_divisor)
    n = float(step)
    exp_avg.lerp_(grad, 1 - hp.beta1)
    exp_avg_sq.mul_(hp.beta2).addcmul_(grad, grad, value=1 - hp.beta2)
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - hp.beta2**n)).add_(hp.eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - hp.beta1**n))
