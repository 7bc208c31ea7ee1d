"""A Tensor ``lr`` works as in torch's optimizers: in ``step()``, state dicts, lr schedulers and compiled steps."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR
from torch.overrides import TorchFunctionMode

from conftest import make_network
from test_compile import _compile_unavailable
from test_optimizer import make_params, run
from torch_lstm_optim import LSTMOptimizer

LR_SHAPES = [(), (1,), (1, 1)]


@pytest.mark.parametrize("shape", LR_SHAPES, ids=["0-dim", "[1]", "[1,1]"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_tensor_lr_steps_exactly_as_the_same_float(any_network: nn.Module, shape: tuple[int, ...],
                                                   dtype: torch.dtype) -> None:
    """Every shape holding one element, for parameters of every float dtype, with several chunks per step."""
    lr = 0.25
    results = []
    for lr_arg in (lr, torch.tensor(lr).reshape(shape)):
        params = make_params(dtype)
        optimizer = LSTMOptimizer(params, any_network, lr=lr_arg, chunk_size=5)
        run(optimizer, params, range(4))
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert b.dtype == dtype and b.shape == a.shape
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7)


def test_per_group_tensor_and_float_lrs(network: nn.Module) -> None:
    """Groups with a Tensor lr and with a float lr share one batch; each gets its own lr."""
    results = []
    for lrs in ((0.5, 0.1), (torch.tensor(0.5), 0.1), (0.5, torch.tensor([0.1]))):
        params = make_params()
        optimizer = LSTMOptimizer([{"params": params[:2], "lr": lrs[0]}, {"params": params[2:], "lr": lrs[1]}],
                                  network)
        run(optimizer, params, range(3))
        results.append(params)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7)


class _NoHostReads(TorchFunctionMode):
    """Raise if anything reads a value of ``watched`` (or a view of it) on the host: ``item``, ``bool``, ``float``."""

    READS = {Tensor.item, Tensor.__bool__, Tensor.__float__, Tensor.__int__, Tensor.tolist, Tensor.numpy}

    def __init__(self, watched: Tensor) -> None:
        super().__init__()
        self.storage = watched.untyped_storage().data_ptr()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in self.READS and any(isinstance(a, Tensor) and a.untyped_storage().data_ptr() == self.storage
                                      for a in args):
            raise AssertionError(f"the step read the Tensor lr on the host ({func.__name__})")
        return func(*args, **(kwargs or {}))


def test_the_step_never_reads_a_tensor_lr_on_the_host(network: nn.Module) -> None:
    lr = torch.tensor([0.5])
    params = make_params()
    optimizer = LSTMOptimizer(params, network, lr=lr)
    with _NoHostReads(lr):
        run(optimizer, params, range(2))
    with pytest.raises(AssertionError, match="host"), _NoHostReads(lr):  # the check itself catches a read
        lr.item()


def test_state_dict_round_trip_keeps_a_tensor_lr(network: nn.Module) -> None:
    """``torch.save`` / ``torch.load(weights_only=True)`` of a state dict with a Tensor lr continues bit for bit,
    and the loaded lr is the optimizer's own tensor (a scheduler of one optimizer does not move the other's)."""
    lr = torch.tensor(0.5)
    params = make_params()
    optimizer = LSTMOptimizer(params, network, lr=lr)
    run(optimizer, params, range(3))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    clones = [nn.Parameter(p.detach().clone()) for p in params]
    restored = LSTMOptimizer(clones, network, lr=torch.tensor(1.0))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored_lr = restored.param_groups[0]["lr"]
    assert isinstance(restored_lr, Tensor) and restored_lr.item() == 0.5 and restored_lr is not lr
    run(optimizer, params, range(3, 6))
    run(restored, clones, range(3, 6))
    for a, b in zip(params, clones, strict=True):
        assert torch.equal(a, b)
    lr.fill_(0.0)
    assert restored_lr.item() == 0.5


def test_float_state_dict_loads_into_tensor_lr_optimizer_and_back(network: nn.Module) -> None:
    params = make_params()
    float_opt = LSTMOptimizer(params, network, lr=0.5)
    tensor_opt = LSTMOptimizer(params, network, lr=torch.tensor(0.5))
    tensor_opt.load_state_dict(float_opt.state_dict())
    float_opt.load_state_dict(LSTMOptimizer(params, network, lr=torch.tensor(0.25)).state_dict())
    run(tensor_opt, params, range(1))
    run(float_opt, params, range(1, 2))
    assert float(float_opt.param_groups[0]["lr"]) == 0.25


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: StepLR(opt, step_size=2, gamma=0.5),
    lambda opt: ExponentialLR(opt, gamma=0.8),
    lambda opt: ReduceLROnPlateau(opt, patience=0, factor=0.5),
], ids=["StepLR", "ExponentialLR", "ReduceLROnPlateau"])
def test_schedulers_update_a_tensor_lr_in_place_and_the_step_follows(network: nn.Module, make_scheduler) -> None:
    """The scheduler writes into the Tensor lr (the same object, as torch does) and the updates equal a float lr's
    under the same schedule."""
    results = []
    for lr in (0.5, torch.tensor(0.5)):
        params = make_params()
        optimizer = LSTMOptimizer(params, network, lr=lr)
        scheduler = make_scheduler(optimizer)
        for step in range(6):
            run(optimizer, params, range(step, step + 1))
            scheduler.step(1.0) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        final_lr = optimizer.param_groups[0]["lr"]
        assert final_lr is lr if isinstance(lr, Tensor) else isinstance(final_lr, float)
        results.append((params, float(final_lr)))
    (float_params, float_lr), (tensor_params, tensor_lr) = results
    assert tensor_lr == pytest.approx(float_lr) and tensor_lr < 0.5
    for a, b in zip(float_params, tensor_params, strict=True):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lr, match", [
    (torch.tensor([1e-3, 1e-3]), "Tensor lr must be 1-element"),
    (torch.ones(1, 2), "Tensor lr must be 1-element"),
    (torch.tensor([]), "Tensor lr must be 1-element"),
    (torch.tensor(-1.0), r"Invalid learning rate: tensor\(-1\.\) \(must be a number >= 0\)"),
    (torch.tensor(float("nan")), "Invalid learning rate"),
    (torch.tensor(True), "Invalid learning rate"),
])
def test_bad_tensor_lrs_raise_torchs_messages(network: nn.Module, lr: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LSTMOptimizer(make_params(), network, lr=lr)


def test_tensor_lr_shape_is_checked_before_the_params() -> None:
    """As in torch: the lr is checked first, so even ``params=None`` gives the lr's message."""
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        LSTMOptimizer(None, lr=torch.tensor([1e-3, 1e-3]))


@pytest.mark.slow
def test_compiled_training_step_with_a_scheduled_tensor_lr() -> None:
    """``torch.compile`` of a whole training step (forward, backward, ``step()``, ``zero_grad()``) gives eager's
    parameters, and a scheduler changing the Tensor lr causes no recompilation (a float lr would)."""
    reason = _compile_unavailable()
    if reason is not None:
        pytest.skip(reason)
    import torch._dynamo

    torch._dynamo.reset()
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        optimizer = LSTMOptimizer(model.parameters(), make_network(preprocessing="scale_free"),
                                  lr=torch.tensor(0.5))
        scheduler = ExponentialLR(optimizer, gamma=0.9)

        def train_step() -> Tensor:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss

        step = torch.compile(train_step) if compiled else train_step
        for _ in range(2):  # the compiled step compiles here: with fresh state, then with existing state
            step()
            scheduler.step()
        with torch._dynamo.config.patch(error_on_recompile=True):  # and never again as the lr changes
            for _ in range(3):
                step()
                scheduler.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
