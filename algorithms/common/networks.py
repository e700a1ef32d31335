"""Networks shared by the algorithms: plain MLPs and a stack of independent MLPs run as one.

Small networks on a CPU spend more time in per-operation overhead than in arithmetic, so
``StackedMLP`` evaluates several same-shaped MLPs (PPO's actor and critic, or a population of agents)
with one batched matmul per layer, and acts through numpy, whose per-call cost is a fraction of torch's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from algorithms.common.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "elu": F.elu,
    "gelu": F.gelu,
}


# In-place forms, for activations applied to a fresh matmul output that nothing else reads: saves
# allocating (and first-touching) one more activation-sized tensor per layer.
INPLACE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": torch.relu_}


NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": lambda h: np.tanh(h, out=h),
    "relu": lambda h: np.maximum(h, 0.0, out=h),
    "elu": lambda h: np.where(h > 0, h, np.expm1(np.minimum(h, 0.0))).astype(h.dtype),
    "gelu": lambda h: (0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))).astype(h.dtype),
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name``; ConfigError naming the valid choices otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}") from None


class Activation(nn.Module):
    """An activation from :data:`ACTIVATIONS` as a module, for ``nn.Sequential``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = activation_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str,
    ortho_init: bool,
    out_gain: float,
) -> nn.Sequential:
    """An MLP ``in_dim → hidden… → out_dim`` with ``activation`` between layers and a linear output.

    With ``ortho_init`` hidden layers get orthogonal weights with gain √2 and the output layer gain
    ``out_gain``; biases start at zero.
    """
    sizes = (in_dim, *hidden)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layer = nn.Linear(fan_in, fan_out)
        if ortho_init:
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)
        layers += [layer, Activation(activation)]
    head = nn.Linear(sizes[-1], out_dim)
    if ortho_init:
        nn.init.orthogonal_(head.weight, out_gain)
        nn.init.zeros_(head.bias)
    layers.append(head)
    return nn.Sequential(*layers)


class _NarrowHead(torch.autograd.Function):
    """``bias + h @ weight`` for a batched layer with few outputs, (G, B, K) @ (G, K, O) → (G, B, O).

    On some CPUs MKL's batched GEMM is pathologically slow when O (or the inner dimension of a gradient
    product) is 1 or 2. Computing the transposed products, and the O = 1 input gradient as an outer
    product, gives the same values (up to summation order) without that path (bench/kernels.py times
    both; bench/results/kernels.md).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return torch.bmm(weight.transpose(1, 2), h.transpose(1, 2)).transpose(1, 2) + bias

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        h, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        need_h, need_w, need_b = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_h = grad_w = grad_b = None
        if need_h:
            if weight.shape[2] == 1:
                grad_h = grad * weight.transpose(1, 2)  # outer product
            else:
                grad_h = torch.bmm(grad, weight.transpose(1, 2))
        if need_w:
            grad_w = torch.bmm(grad.transpose(1, 2), h).transpose(1, 2)
        if need_b:
            grad_b = grad.sum(1, keepdim=True)
        return grad_h, grad_w, grad_b


def narrow_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``torch.baddbmm(bias, h, weight)`` for an output layer with few columns, computed faster."""
    return _NarrowHead.apply(h, weight, bias)


NARROW_HEAD_MAX_OUT = 8
"""Heads with at most this many outputs take the :class:`_NarrowHead` path when enabled."""


# Multiply a gradient (numpy, in place) by a hidden activation's derivative, from the activation's
# output a: 1 - a² for tanh, [a > 0] for ReLU. In numpy, whose calls cost less than torch's on a small
# network's layers (bench/results/kernels.md).
_TIMES_DERIVATIVE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "tanh": lambda grad, output: np.multiply(grad, 1 - output * output, out=grad),
    "relu": lambda grad, output: np.multiply(grad, output > 0, out=grad),
}

WRITTEN_OUT_ACTIVATIONS = tuple(_TIMES_DERIVATIVE)
"""Hidden activations whose derivative :meth:`StackedMLP.backward_written_out` writes out (it follows
from the activation's output)."""


class _GradWritingLinear(torch.autograd.Function):
    """``torch.baddbmm(bias, h, weight)`` whose backward writes the weight and bias gradients straight
    into ``weight.grad`` and ``bias.grad``, replacing what they held, and hands autograd nothing for them.

    Autograd would compute each gradient into a new tensor and then add it to ``.grad``, which the
    optimizer must zero again: three more passes over every gradient each step (read the new one, read
    and write ``.grad``) plus the zeroing. Once a population's weights outgrow the cache, the update is
    bound by those passes (bench/results/sweep_speed.md).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(h, weight, bias)
        return torch.baddbmm(bias, h, weight)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None]:
        h, weight, bias = ctx.saved_tensors  # type: ignore[attr-defined]
        if weight.grad is None or bias.grad is None:
            raise RuntimeError(
                "write_grads: allocate the parameters' .grad before backward (flatten_by_member does)"
            )
        grad_h = torch.bmm(grad, weight.transpose(1, 2)) if ctx.needs_input_grad[0] else None  # type: ignore[attr-defined]
        # beta=0: the old contents are ignored, NaN included, so nothing needs zeroing between steps.
        weight.grad.baddbmm_(h.transpose(1, 2), grad, beta=0.0)
        torch.sum(grad, dim=1, keepdim=True, out=bias.grad)
        return grad_h, None, None


class StackedMLP(nn.Module):
    """``G`` independent MLPs with the same hidden sizes, evaluated with one batched matmul per layer.

    Member ``g`` maps ``in_dim → hidden… → out_dims[g]``; outputs are padded to ``max(out_dims)``
    columns (padding weights stay zero and receive no gradient). Mathematically each member is an
    ordinary MLP; only the evaluation is batched.

    Args:
        n_members: G, the number of MLPs.
        in_dim: input features (shared by all members, or one input per member).
        hidden: hidden layer sizes.
        out_dims: output size of each member.
        activation: hidden activation name.
        ortho_init: orthogonal init, gain √2 for hidden layers and ``out_gains[g]`` for member g's head.
        out_gains: head gain per member (0.01 for a policy head, 1 for a value head).
        narrow_head: compute a head of at most ``NARROW_HEAD_MAX_OUT`` outputs with transposed
            products (same function; avoids MKL's slow path for one- or two-column outputs on some CPUs).
        write_grads: each backward writes the weight and bias gradients into their ``.grad`` tensors,
            replacing their contents, instead of adding to them (see :class:`_GradWritingLinear`). The
            caller allocates those tensors (e.g. with :func:`algorithms.common.optim.flatten_by_member`),
            calls backward through the network once per optimizer step and need not zero them. Its
            Python-level backward costs more than it saves for small networks (under ~1 MiB of weights).
    """

    def __init__(
        self,
        n_members: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dims: Sequence[int],
        activation: str,
        ortho_init: bool,
        out_gains: Sequence[float],
        narrow_head: bool = False,
        write_grads: bool = False,
    ) -> None:
        super().__init__()
        if len(out_dims) != n_members or len(out_gains) != n_members:
            raise ValueError("out_dims and out_gains need one entry per member")
        self.n_members = n_members
        self.activation = activation
        self.out_dims = tuple(out_dims)
        self.act = INPLACE_ACTIVATIONS.get(activation, activation_fn(activation))
        sizes = (in_dim, *hidden, max(out_dims))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            is_head = i == len(sizes) - 2
            weight = torch.zeros(n_members, fan_in, fan_out)
            for g in range(n_members):
                cols = out_dims[g] if is_head else fan_out
                gain = out_gains[g] if is_head else math.sqrt(2)
                weight[g, :, :cols] = _member_init(fan_in, cols, gain, ortho_init)
            self.weights.append(nn.Parameter(weight))
            bias = torch.zeros(n_members, 1, fan_out)
            if not ortho_init:  # nn.Linear's default: U(−1/√fan_in, 1/√fan_in)
                bound = 1 / math.sqrt(fan_in)
                for g in range(n_members):
                    cols = out_dims[g] if is_head else fan_out
                    bias[g, 0, :cols].uniform_(-bound, bound)
            self.biases.append(nn.Parameter(bias))
        # Plain tuple of (weight, bias) pairs: indexing a ParameterList costs microseconds per access.
        self._layers = tuple(zip(self.weights, self.biases, strict=True))
        self._narrow_head_requested = narrow_head
        self._narrow_head = narrow_head and max(out_dims) <= NARROW_HEAD_MAX_OUT
        self._write_grads = False
        self.write_grads = write_grads
        self._numpy_act = NUMPY_ACTIVATIONS[activation]
        self._numpy_layers: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
        self._numpy_ptr = 0

    @property
    def write_grads(self) -> bool:
        """Whether backward writes the gradients into ``.grad`` (see the class's ``write_grads`` argument)."""
        return self._write_grads

    @write_grads.setter
    def write_grads(self, value: bool) -> None:
        # The narrow head's gradients go through autograd and would accumulate where nothing zeroes them.
        if value and self._narrow_head_requested:
            raise ValueError("narrow_head and write_grads cannot be combined")
        self._write_grads = value

    def _numpy_weights(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Zero-copy numpy views of the weights, so optimizer steps are seen at once."""
        if self._numpy_layers is None or self._numpy_ptr != self._layers[0][0].data_ptr():
            self._numpy_layers = tuple((w.detach().numpy(), b.detach().numpy()) for w, b in self._layers)
            self._numpy_ptr = self._layers[0][0].data_ptr()
        return self._numpy_layers

    def forward_numpy(self, x: np.ndarray, members: slice | None = None) -> np.ndarray:
        """The same function as :meth:`forward`, in numpy on the current weights, without autograd.

        For acting on a handful of observations numpy's per-call cost is a fraction of torch's. With
        ``members``, only that slice of the MLPs is evaluated.
        """
        layers = self._numpy_weights()
        h = x
        last = len(layers) - 1
        for i, (weight, bias) in enumerate(layers):
            if members is None:
                h = np.matmul(h, weight)
                h += bias
            else:
                h = np.matmul(h, weight[members])
                h += bias[members]
            if i < last:
                h = self._numpy_act(h)
        return h

    @property
    def writes_out_backward(self) -> bool:
        """Whether :meth:`forward_keeping_inputs` and :meth:`backward_written_out` cover this network:
        tanh or ReLU hidden layers (their derivatives follow from their outputs), no narrow head."""
        return self.activation in WRITTEN_OUT_ACTIVATIONS and not self._narrow_head

    @torch.no_grad()
    def forward_keeping_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`forward` without autograd, returning with the output every layer's input, which is
        what :meth:`backward_written_out` needs."""
        h = x.expand(self.n_members, *x.shape) if x.dim() == 2 else x
        inputs = []
        last = len(self._layers) - 1
        for i, (weight, bias) in enumerate(self._layers):
            inputs.append(h)
            h = torch.baddbmm(bias, h, weight)
            if i < last:  # in place through numpy, whose tanh is the faster (bench/results/kernels.md)
                self._numpy_act(h.numpy())
        return h, tuple(inputs)

    @torch.no_grad()
    def backward_written_out(self, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Back-propagate ``grad_out`` (d loss / d output, shaped like the output) through the layers
        whose ``inputs`` :meth:`forward_keeping_inputs` returned, writing each weight's and bias's
        gradient into its ``.grad`` (replacing what it held): what autograd computes, without recording
        a graph, which for small networks costs more than the arithmetic (bench/results/throughput.md).
        """
        grad = grad_out
        for i in reversed(range(len(self._layers))):
            weight, bias = self._layers[i]
            torch.bmm(inputs[i].transpose(1, 2), grad, out=weight.grad)
            torch.sum(grad, dim=1, keepdim=True, out=bias.grad)
            if i == 0:
                return
            grad = torch.bmm(grad, weight.transpose(1, 2))
            _TIMES_DERIVATIVE[self.activation](grad.numpy(), inputs[i].numpy())

    @torch.no_grad()
    def load_members(
        self, source: StackedMLP, members: slice = slice(None), source_members: slice = slice(None)
    ) -> None:
        """Copy the weights of ``source``'s MLPs ``source_members`` over this stack's ``members`` (a
        population filling a slot from a single agent, or handing a member back as one)."""
        for ours, theirs in zip(self.weights, source.weights, strict=True):
            ours[members] = theirs[source_members]
        for ours, theirs in zip(self.biases, source.biases, strict=True):
            ours[members] = theirs[source_members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of shape (B, in_dim), shared by all members, or (G, B, in_dim); returns (G, B, max_out)."""
        h = x.expand(self.n_members, *x.shape) if x.dim() == 2 else x
        last = len(self._layers) - 1
        writing = self.write_grads and torch.is_grad_enabled()
        for i, (weight, bias) in enumerate(self._layers):
            if i == last and self._narrow_head:
                return narrow_linear(h, weight, bias)
            h = _GradWritingLinear.apply(h, weight, bias) if writing else torch.baddbmm(bias, h, weight)
            if i < last:
                h = self.act(h)
        return h


def _member_init(fan_in: int, fan_out: int, gain: float, ortho: bool) -> torch.Tensor:
    """A (fan_in, fan_out) weight initialised like ``nn.Linear(fan_in, fan_out)`` (transposed)."""
    layer_weight = torch.empty(fan_out, fan_in)
    if ortho:
        nn.init.orthogonal_(layer_weight, gain)
    else:
        nn.init.kaiming_uniform_(layer_weight, a=math.sqrt(5))
    return layer_weight.t()


def configure_torch_cpu(threads: int) -> None:
    """Set torch's intra-op thread count and flush denormal floats to zero, for this process.

    For small networks a second thread costs more in synchronisation than it saves in arithmetic, and a
    sweep already keeps the cores busy with one process each. Denormal floats (magnitudes below
    ~1.2e-38) build up while training, for instance in Adam's first moments of ReLU units whose gradient
    stays zero, and a CPU computes on them far more slowly; values that small carry no information for
    training, so they are flushed to zero (timings of both choices: bench/results/sweep_speed.md,
    "Denormals and threads, measured inside a sweep").
    """
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


# --- twin critics (SAC, TD3) ------------------------------------------------------------------------
def make_twin_critic(obs_dim: int, act_dim: int, net_arch: Sequence[int], activation: str) -> StackedMLP:
    """Q₁ and Q₂ as one two-member stacked MLP on the concatenated (s, a); output (2, B, 1).

    nn.Linear's default initialisation, as SB3's off-policy networks.
    """
    return StackedMLP(2, obs_dim + act_dim, net_arch, (1, 1), activation, False, (1.0, 1.0), narrow_head=True)


class _TwinMinQ(torch.autograd.Function):
    """min(Q₁, Q₂) of a two-member ReLU critic at inputs x, differentiable in x only.

    The gradient of a row's minimum flows through the smaller critic alone (the other's is zero), so
    the backward pass runs each row through one member: half the matmul work of differentiating both
    critics, as autograd would. Used by SAC's policy step, which needs ∂ min Q / ∂a but no critic
    weight gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, critic: StackedMLP
    ) -> torch.Tensor:
        layers = list(zip(critic.weights, critic.biases, strict=True))
        hidden: list[torch.Tensor] = []  # post-ReLU activations, (2, B, width) each
        with torch.no_grad():
            h = x.expand(2, *x.shape)
            for weight, bias in layers[:-1]:
                h = torch.baddbmm(bias, h, weight).relu_()
                hidden.append(h)
            q = narrow_linear(h, *layers[-1])[:, :, 0]
            q_min, member = q.min(0)
        ctx.save_for_backward(member, *hidden)
        ctx.layers = layers  # type: ignore[attr-defined]
        return q_min

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        member, *hidden = ctx.saved_tensors  # type: ignore[attr-defined]
        layers = ctx.layers  # type: ignore[attr-defined]
        grad_x = torch.zeros(grad.shape[0], layers[0][0].shape[1])
        with torch.no_grad():
            for m in (0, 1):
                rows = torch.nonzero(member == m)[:, 0]
                if rows.numel() == 0:
                    continue
                g = grad[rows, None] * layers[-1][0][m, :, 0]  # through the linear head
                for i in range(len(hidden) - 1, -1, -1):
                    g = (g * (hidden[i][m, rows] > 0)) @ layers[i][0][m].t()  # ReLU, then linear
                grad_x[rows] = g
        return grad_x, None


def twin_min_q(critic: StackedMLP, x: torch.Tensor) -> torch.Tensor:
    """min over the two members of ``critic`` at inputs ``x`` (B, in), shape (B,).

    Meant for a backward pass that asks for input gradients only (``backward(inputs=…)``): ReLU
    critics take the one-member backward of :class:`_TwinMinQ`, which computes no weight gradients;
    other activations go through autograd.
    """
    if critic.activation == "relu" and critic.n_members == 2:
        return _TwinMinQ.apply(x, critic)
    return critic(x).amin(0)[:, 0]
