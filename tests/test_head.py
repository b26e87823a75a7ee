"""The linear-head trainer: the objective it minimises, its optimum, exact semantics of lambda, I/O and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failmode.errors import UsageError
from failmode.head import HeadParams, LinearHead, accuracy, apply_head, head_objective, train_head


def _blobs(n: int, d: int, c: int, seed: int, spread: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * spread
    y = torch.arange(n) % c
    return centres[y] + 0.3 * torch.randn(n, d, generator=g), y


def test_matches_the_plain_autograd_sgd_loop():
    """Each epoch is torch.optim.SGD's step (d = g + wd * p; buf = m * buf + d; p -= lr * buf) on the autograd
    gradient of mean CE(original) + lam * mean CE(debug); written out here because torch.optim imports dynamo (7 s)."""
    x, y = _blobs(60, 8, 4, seed=0)
    dx, dy = _blobs(20, 8, 4, seed=1)
    lin = torch.nn.Linear(8, 4)
    init = LinearHead(lin.weight.detach().clone(), lin.bias.detach().clone())
    params = [lin.weight, lin.bias]
    bufs = [torch.zeros_like(p) for p in params]
    ce = torch.nn.functional.cross_entropy
    for _ in range(40):
        grads = torch.autograd.grad(ce(lin(x), y) + 0.5 * ce(lin(dx), dy), params)
        with torch.no_grad():
            for p, g, buf in zip(params, grads, bufs):
                buf.mul_(0.9).add_(g.add(p, alpha=5e-4))
                p.add_(buf, alpha=-0.2)
    head = train_head(x, y, HeadParams(lam=0.5, epochs=40), debug_x=dx, debug_y=dy, init=init, device="cpu")
    torch.testing.assert_close(head.weight, lin.weight.detach(), rtol=0, atol=2e-6)
    torch.testing.assert_close(head.bias, lin.bias.detach(), rtol=0, atol=2e-6)


def test_reaches_the_optimum_of_the_convex_objective():
    """Full-batch SGD ends where L-BFGS on the same objective ends: same weights, gradient ~ 0."""
    x, y = _blobs(90, 6, 3, seed=2)
    dx, dy = _blobs(30, 6, 3, seed=3)
    kw = {"lam": 0.7, "weight_decay": 0.05}
    params = HeadParams(lr=0.5, epochs=1500, **kw)
    head = train_head(x, y, params, debug_x=dx, debug_y=dy, device="cpu")

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:  # the same objective, float64, for L-BFGS
        t = torch.from_numpy(theta).requires_grad_()
        w, b = t[:18].view(3, 6), t[18:]
        ce = torch.nn.functional.cross_entropy
        loss = ce(x.double() @ w.T + b, y) + kw["lam"] * ce(dx.double() @ w.T + b, dy)
        loss = loss + kw["weight_decay"] / 2 * t.square().sum()
        (grad,) = torch.autograd.grad(loss, [t])
        return loss.item(), grad.numpy()

    from scipy.optimize import minimize

    sol = minimize(objective, np.zeros(21), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
    best = LinearHead(sol.x[:18].reshape(3, 6), sol.x[18:])
    torch.testing.assert_close(head.weight, best.weight, rtol=0, atol=1e-4)
    torch.testing.assert_close(head.bias, best.bias, rtol=0, atol=1e-4)
    f = head_objective(head, x, y, params, debug_x=dx, debug_y=dy)
    assert f == pytest.approx(head_objective(best, x, y, params, debug_x=dx, debug_y=dy), rel=1e-6)
    # gradient of the objective at the trained head, by autograd (independent of the trainer's analytic gradient)
    wt, bt = head.weight.double().requires_grad_(), head.bias.double().requires_grad_()
    ce = torch.nn.functional.cross_entropy
    obj = ce(x.double() @ wt.T + bt, y) + kw["lam"] * ce(dx.double() @ wt.T + bt, dy)
    obj = obj + kw["weight_decay"] / 2 * (wt.square().sum() + bt.square().sum())
    gw, gb = torch.autograd.grad(obj, [wt, bt])
    assert max(gw.abs().max().item(), gb.abs().max().item()) < 1e-5
    assert accuracy(head, x, y) == 1.0


def test_lambda_zero_is_plain_training_exactly():
    x, y = _blobs(40, 5, 4, seed=4)
    dx, dy = _blobs(16, 5, 4, seed=5)
    plain = train_head(x, y, HeadParams(epochs=30), device="cpu")
    zero = train_head(x, y, HeadParams(lam=0.0, epochs=30), debug_x=dx, debug_y=dy, device="cpu")
    assert torch.equal(plain.weight, zero.weight) and torch.equal(plain.bias, zero.bias)
    assert not torch.equal(plain.weight, train_head(x, y, HeadParams(epochs=30), debug_x=dx, debug_y=dy).weight)


def test_losses_are_means_over_each_set():
    """Repeating the debug set (or the original set) does not change the objective: both terms are means."""
    x, y = _blobs(30, 5, 3, seed=6)
    dx, dy = _blobs(12, 5, 3, seed=7)
    once = train_head(x, y, HeadParams(lam=2.0, epochs=25), debug_x=dx, debug_y=dy, device="cpu")
    twice = train_head(torch.cat([x, x]), torch.cat([y, y]), HeadParams(lam=2.0, epochs=25),
                       debug_x=torch.cat([dx, dx] * 2), debug_y=torch.cat([dy, dy] * 2), device="cpu")
    torch.testing.assert_close(once.weight, twice.weight, rtol=0, atol=2e-5)  # equal up to float rounding
    other = train_head(x, y, HeadParams(lam=1.0, epochs=25), debug_x=dx, debug_y=dy, device="cpu")
    assert (once.weight - other.weight).abs().max() > 1e-2


def test_numpy_inputs_init_and_save_load(tmp_path):
    x, y = _blobs(24, 4, 3, seed=8)
    init = LinearHead(np.ones((3, 4), np.float32), np.zeros(3, np.float32))
    a = train_head(x.numpy(), y.numpy(), HeadParams(epochs=10), init=init)
    b = train_head(x, y, HeadParams(epochs=10), init=init)
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(init.weight, torch.ones(3, 4))  # the init head is not modified
    a.save(tmp_path / "head.safetensors", metadata={"lam": 0.5})
    back = LinearHead.load(tmp_path / "head.safetensors")
    assert torch.equal(back.weight, a.weight) and torch.equal(back.bias, a.bias)
    logits = back.logits(x.numpy())
    assert isinstance(logits, np.ndarray) and logits.shape == (24, 3)
    assert np.array_equal(back.predict(x), logits.argmax(1))
    assert accuracy(back, x, y) == pytest.approx(float((logits.argmax(1) == y.numpy()).mean()))
    assert train_head(x, y, HeadParams(epochs=0), init=init).weight.equal(init.weight)
    assert train_head(x, y, HeadParams(epochs=3), num_classes=7).num_classes == 7
    # "random" ignores the given head: nn.Linear's init from the seed, as with no head at all
    fresh = train_head(x, y, HeadParams(epochs=0, init="random", seed=4), init=init)
    assert fresh.weight.equal(train_head(x, y, HeadParams(epochs=0, seed=4), num_classes=3).weight)
    assert not fresh.weight.equal(init.weight)


def test_one_linear_head_reads_safetensors_npz_and_torch_files(tmp_path):
    from failmode.errors import LoadError, ValidationError

    w, b = torch.randn(3, 4), torch.randn(3)
    np.savez(tmp_path / "h.npz", weight=w.numpy(), bias=b.numpy())
    torch.save({"fc.weight": w, "fc.bias": b, "step": 3}, tmp_path / "h.pth")  # prefixed keys, a non-tensor entry
    for name in ("h.npz", "h.pth"):
        head = LinearHead.load(tmp_path / name)
        assert isinstance(head, LinearHead) and torch.equal(head.weight, w) and torch.equal(head.bias, b)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    preds, logits = apply_head(head, x, 3)  # mining's predictions through the evaluate package's head type
    np.testing.assert_allclose(logits, x @ w.numpy().T + b.numpy(), rtol=1e-5, atol=1e-6)
    assert list(preds) == list(logits.argmax(1))
    np.savez(tmp_path / "bad.npz", w=w.numpy())
    with pytest.raises(ValidationError, match="bad.npz: a head file needs 'weight' and 'bias' arrays \\(found w\\)"):
        LinearHead.load(tmp_path / "bad.npz")
    with pytest.raises(LoadError, match="head file .*missing.npz does not exist"):
        LinearHead.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kwargs, message", [
    ({"debug_x": np.zeros((2, 4), np.float32)}, "both debug_x and debug_y"),
    ({"num_classes": 2}, "labels must lie in [0, 2)"),
    ({"debug_x": np.zeros((0, 4), np.float32), "debug_y": np.zeros(0, np.int64)}, "debug set is empty"),
    ({"debug_x": np.zeros((2, 5), np.float32), "debug_y": np.zeros(2, np.int64)}, "must be [M, 4]"),
    ({"init": LinearHead(np.zeros((3, 5)), np.zeros(3))}, "init head is (3, 5)"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    x, y = _blobs(12, 4, 3, seed=9)
    with pytest.raises(UsageError) as e:
        train_head(x, y, HeadParams(epochs=1), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fields, message", [
    ({"lam": -1.0}, "lambda must be a finite number >= 0, got -1.0"),
    ({"lam": float("nan")}, "lambda must be a finite number >= 0, got nan"),
    ({"precision": "fp8"}, "head precision must be one of auto, fp32, tf32, bf16, got 'fp8'"),
    ({"init": "zeros"}, "head init must be 'model' or 'random', got 'zeros'"),
    ({"lr": 0.0}, "need lr > 0, 0 <= momentum < 1, weight decay >= 0 and epochs >= 0 (got lr 0.0"),
    ({"momentum": 1.0}, "momentum 1.0"),
    ({"epochs": 2_000_000}, "epochs"),
])
def test_head_params_are_checked_once_when_made(fields, message):
    """The options object refuses a bad value in one line when it is made, before any feature is touched."""
    with pytest.raises(UsageError) as e:
        HeadParams(**fields)
    assert message in str(e.value) and "\n" not in str(e.value)
