"""The speed devices in common/ compute exactly what the plain PyTorch versions compute."""

import copy
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from algorithms.common.networks import StackedMLP, mlp
from algorithms.common.optim import FlatAdam, flatten_by_member, flatten_parameters


def test_stacked_mlp_member_equals_an_ordinary_mlp() -> None:
    torch.manual_seed(0)
    net = StackedMLP(2, 4, (8, 8), (3, 1), "tanh", ortho_init=True, out_gains=(0.01, 1.0))
    x = torch.randn(10, 4)
    out = net(x)
    assert out.shape == (2, 10, 3)
    for g, out_dim in enumerate((3, 1)):
        h = x
        for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
            h = h @ w[g] + b[g, 0]
            if i < 2:
                h = torch.tanh(h)
        torch.testing.assert_close(out[g, :, :out_dim], h[:, :out_dim], atol=1e-5, rtol=1e-5)
    # padding columns of the narrower head stay zero
    assert torch.all(out[1, :, 1:] == 0)


def test_stacked_mlp_init_is_orthogonal_with_the_requested_gains() -> None:
    torch.manual_seed(0)
    net = StackedMLP(2, 6, (16,), (4, 1), "tanh", ortho_init=True, out_gains=(0.01, 1.0))
    w_hidden = net.weights[0][0]  # (6, 16): rows orthogonal with gain √2
    torch.testing.assert_close(w_hidden @ w_hidden.T, 2 * torch.eye(6), atol=1e-5, rtol=0)
    head = net.weights[1][0][:, :4]  # (16, 4) columns orthonormal × 0.01
    torch.testing.assert_close(head.T @ head, 1e-4 * torch.eye(4), atol=1e-8, rtol=0)


def test_flat_adam_gives_the_same_update_as_torch_adam_with_clipping() -> None:
    torch.manual_seed(0)
    reference = mlp(4, (16, 16), 2, "tanh", ortho_init=True, out_gain=0.01)
    flat_model = copy.deepcopy(reference)
    flat = flatten_parameters(flat_model.parameters())
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-2, eps=1e-5)
    opt_flat = FlatAdam(
        flat, lr=1e-2, eps=1e-5, max_grad_norm=1e-3
    )  # small: clipping always active, and with ε it changes the step
    for _ in range(5):
        x = torch.randn(32, 4)
        loss_ref = reference(x).pow(2).sum()
        opt_ref.zero_grad()
        loss_ref.backward()
        nn.utils.clip_grad_norm_(reference.parameters(), 1e-3)
        opt_ref.step()
        flat_model(x).pow(2).sum().backward()
        opt_flat.step()
    for p_ref, p_flat in zip(reference.parameters(), flat_model.parameters(), strict=True):
        torch.testing.assert_close(p_flat, p_ref, atol=1e-6, rtol=1e-5)
        assert p_flat.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
    assert torch.all(flat.grad == 0)


def test_numpy_forward_matches_torch_forward_and_follows_optimizer_steps() -> None:
    import numpy as np

    for activation in ("tanh", "relu", "elu", "gelu"):
        torch.manual_seed(0)
        net = StackedMLP(2, 5, (32, 32), (3, 1), activation, ortho_init=False, out_gains=(0.01, 1.0))
        flat = flatten_parameters(net.parameters())
        opt = FlatAdam(flat, lr=0.1)
        x = torch.randn(7, 5)
        np.testing.assert_allclose(net.forward_numpy(x.numpy()), net(x).detach().numpy(), atol=1e-5)
        net(x).pow(2).sum().backward()
        opt.step()
        np.testing.assert_allclose(net.forward_numpy(x.numpy()), net(x).detach().numpy(), atol=1e-5)


def test_configure_torch_cpu_sets_threads_and_flushes_denormals() -> None:
    # A fresh process: the test session's own settings must not decide the outcome.
    code = (
        "import torch\n"
        "from algorithms.common.networks import configure_torch_cpu\n"
        "before = float(torch.tensor([1e-39]) * 1.0)\n"
        "configure_torch_cpu(1)\n"
        "print(before, float(torch.tensor([1e-39]) * 1.0), torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, threads = result.stdout.split()
    assert float(before) > 0.0  # torch keeps denormals by default
    assert float(after) == 0.0
    assert int(threads) == 1


def test_adam_update_plain_ops_match_the_fused_kernel_with_a_gradient_divisor(monkeypatch) -> None:
    """The fallback for builds without ATen's fused Adam divides the gradient as the kernel does."""
    from algorithms.common import optim

    torch.manual_seed(0)
    param, grad = torch.randn(1000), torch.randn(1000)
    divisor = torch.tensor(3.0)
    hyperparameters = SimpleNamespace(beta1=0.9, beta2=0.999, eps=1e-8)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(optim, "_FUSED_ADAM", None)
        p, g, step = param.clone(), grad.clone(), torch.ones(())
        m, v = torch.zeros(1000), torch.zeros(1000)
        optim.adam_update(p, g, m, v, step, 1e-2, hyperparameters, divisor)
        results.append((p, g, m, v))
    assert optim._FUSED_ADAM is None  # the second pass did take the fallback
    for fused_t, plain_t in zip(*results, strict=True):
        torch.testing.assert_close(plain_t, fused_t, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[0][1], grad / 3)  # both leave the divided gradient behind


@pytest.mark.parametrize("activation", ["tanh", "relu"])  # relu runs in place on the layer's output
def test_written_gradients_equal_autograd_s_and_replace_the_old_ones(activation: str) -> None:
    """write_grads: backward writes into the flat buffer's views what autograd would have accumulated into
    zeroed gradients, and a second backward replaces the first's gradients (stale values and NaN alike)."""
    torch.manual_seed(0)
    plain = StackedMLP(4, 5, (16, 8), (2, 1, 2, 1), activation, True, (0.01, 1.0, 0.01, 1.0))
    writing = copy.deepcopy(plain)
    writing.write_grads = True
    flat_plain = flatten_by_member(list(plain.parameters()), 2)
    flat_writing = flatten_by_member(list(writing.parameters()), 2)
    flat_writing.grad.fill_(float("nan"))  # stale contents: must be overwritten, not added to
    for step in range(2):
        x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(step))
        flat_plain.grad.zero_()
        plain(x).pow(2).sum().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no layout warning: autograd accumulates nothing here
            writing(x).pow(2).sum().backward()
        torch.testing.assert_close(flat_writing.grad, flat_plain.grad, rtol=1e-6, atol=1e-7)
    assert flat_plain.grad.abs().sum() > 0


def test_written_gradients_need_allocated_grad_tensors() -> None:
    net = StackedMLP(2, 3, (4,), (1, 1), "relu", False, (1.0, 1.0), write_grads=True)
    with pytest.raises(RuntimeError, match=r"allocate the parameters' \.grad"):
        net(torch.randn(5, 3)).sum().backward()
    with torch.no_grad():  # without autograd it is an ordinary forward pass
        assert net(torch.randn(5, 3)).shape == (2, 5, 1)


def test_written_gradients_and_the_narrow_head_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="narrow_head and write_grads"):
        StackedMLP(2, 3, (4,), (1, 1), "relu", False, (1.0, 1.0), narrow_head=True, write_grads=True)
    net = StackedMLP(2, 3, (4,), (1, 1), "relu", False, (1.0, 1.0), narrow_head=True)
    with pytest.raises(ValueError, match="narrow_head and write_grads"):  # set later, as a population does
        net.write_grads = True
    assert not net.write_grads
