"""The step and the meta-trainer's unroll are device-agnostic: nothing in them is tied to the CPU.

Without a GPU, the optimizer's step runs on CUDA tensors faked by ``FakeTensorMode`` (shapes and devices, no data),
and the unroll on the ``meta`` device: every op checks that its tensors share a device, so a tensor made on the CPU
inside them (other than a 0-dim scalar) would fail there. With a GPU the optimizer's updates are also compared with
the CPU's, number for number.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FORMS, make_network
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from torch_lstm_optim import LSTMOptimizer
from torch_lstm_optim.meta.tasks import Problem
from torch_lstm_optim.meta.unroll import Unroll, advance, meta_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _AllFinite(TorchDispatchMode):
    """Answers the step's one host read, ``bool(isfinite(grad).all())``, with True: fake tensors hold no data."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.ops.aten._local_scalar_dense.default:
            return True
        return func(*args, **(kwargs or {}))


def fake_cuda() -> tuple[FakeTensorMode, _AllFinite]:
    """Modes to enter in this order: tensors made inside are fake, and may claim ``cuda`` on a CPU-only machine."""
    return FakeTensorMode(allow_non_fake_inputs=True), _AllFinite()


@pytest.mark.parametrize("form", sorted(FORMS))
def test_optimizer_step_runs_on_cuda_tensors(form: str) -> None:
    """Two steps of every form of the rule, with a float and a Tensor lr, chunks shared by two parameters."""
    fake, all_finite = fake_cuda()
    with fake, all_finite:
        with torch.device("cuda"):  # (a real module cannot be moved into fake mode: .to() cannot swap its tensors)
            network = make_network(**FORMS[form])
        model = nn.Sequential(nn.Linear(6, 5, device="cuda"), nn.Linear(5, 3, device="cuda"))
        optimizer = LSTMOptimizer([{"params": model[0].parameters()},
                                   {"params": model[1].parameters(), "lr": torch.tensor(0.5)}], network,
                                  chunk_size=16, weight_decay=0.1)
        for _ in range(2):
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            optimizer.step()
        devices = {v.device.type for state in optimizer.state.values() for v in state.values()
                   if isinstance(v, torch.Tensor)}
        assert devices == {"cuda"} and all(p.device.type == "cuda" for p in model.parameters())


def test_unroll_runs_on_another_device() -> None:
    """The meta-trainer's truncated unroll, meta-gradient included, on a problem whose tensors are on the ``meta``
    device (shapes only; CUDA's fakes cannot run a backward without a GPU): a tensor the unroll or the rule made on
    the CPU would meet the problem's in some op, which refuses to mix the two."""
    with torch.device("meta"):
        network = make_network(**FORMS["momentum_mix"])
        w, y = torch.randn(4, 4), torch.randn(4)
        problem = Problem(params={"theta": torch.randn(4)},
                          loss=lambda params, step: (w @ params["theta"] - y).square().sum())
    run = Unroll.start([problem, problem])
    meta_loss(advance(network, run, 3), "log").backward()
    run.detach()
    advance(network, run, 2)
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in network.parameters())
    assert {v.device.type for v in run.state["all"].values()} == {"meta"}
    assert all(v.device.type == "meta" for params in run.params for v in params.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", sorted(FORMS))
def test_step_on_a_device_matches_the_cpu(device: str, form: str) -> None:
    """The same steps with the device named explicitly (``cuda`` where there is one) give the CPU's updates."""
    network = make_network(**FORMS[form])
    torch.manual_seed(0)
    reference = nn.Linear(7, 3)
    grads = [[torch.randn_like(p) for p in reference.parameters()] for _ in range(3)]
    results = []
    for where in ("cpu", device):
        model = nn.Linear(7, 3)
        model.load_state_dict(reference.state_dict())
        model.to(torch.device(where))
        optimizer = LSTMOptimizer(model.parameters(), network, chunk_size=8)
        for step_grads in grads:
            for p, g in zip(model.parameters(), step_grads):
                p.grad = g.to(where)
            optimizer.step()
        results.append([p.detach().cpu() for p in model.parameters()])
    for ours, cpu in zip(*results):
        torch.testing.assert_close(ours, cpu, rtol=1e-5, atol=1e-6)
