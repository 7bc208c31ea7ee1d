"""Non-finite gradients and the whole float range: a NaN/inf never reaches a parameter or an LSTM state, and no
finite gradient, however large or small, produces a non-finite update or state."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from test_optimizer import make_params, set_grads, snapshot, assert_same_snapshot
from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, NetworkConfig, NonFiniteGradientError
from torch_lstm_optim.network import state_names

# The paper's network, and the scale-free one with every optional part switched on (most state, most features).
CONFIGS = {
    "paper": NetworkConfig(),
    "scale_free": NetworkConfig(preprocessing="scale_free", log_rms_feature=True, output="direction_magnitude"),
}
BAD = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}


def network_for(name: str, weights: str = "fresh") -> CoordinatewiseLSTM:
    """A network of one of :data:`CONFIGS`: freshly initialised, or with large random weights (a harsher stand-in
    for trained ones: gates saturate, the head's output is large)."""
    torch.manual_seed(0)
    network = CoordinatewiseLSTM(CONFIGS[name])
    if weights == "random":
        with torch.no_grad():
            for w in network.parameters():
                w.normal_(0.0, 2.0)
    return network


def state_copy(optimizer: LSTMOptimizer, params: list[Tensor]) -> list[dict[str, Tensor]]:
    return [{k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)} for p in params]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("at_step", [0, 2])
@pytest.mark.parametrize("chunk_size", [7, 65536])
def test_a_nonfinite_coordinate_is_left_alone_and_every_other_one_updates_exactly(
        config: str, bad: str, at_step: int, chunk_size: int) -> None:
    """Two optimizers see the same gradients except one coordinate of one parameter at ``at_step``.

    With ``chunk_size=7`` the injected coordinate shares its chunk with coordinates of other parameters.
    """
    network = network_for(config)
    clean, dirty = make_params(), make_params()
    clean_opt = LSTMOptimizer(clean, network, lr=0.5, chunk_size=chunk_size)
    dirty_opt = LSTMOptimizer(dirty, network, lr=0.5, chunk_size=chunk_size)
    for step in range(at_step):
        for params, optimizer in ((clean, clean_opt), (dirty, dirty_opt)):
            set_grads(params, step)
            optimizer.step()
    coordinate = 6  # of parameter 0, shape (3, 4): row 1, column 2
    before_param = dirty[0].detach().reshape(-1)[coordinate].clone()
    before_state = state_copy(dirty_opt, dirty[:1])[0] if at_step else None

    set_grads(clean, at_step)
    clean_opt.step()
    set_grads(dirty, at_step)
    dirty[0].grad.view(-1)[coordinate] = BAD[bad]
    with pytest.warns(RuntimeWarning, match="1 gradient coordinate"):
        dirty_opt.step()
    assert dirty_opt.nonfinite_count == 1

    others = torch.arange(dirty[0].numel()) != coordinate
    assert torch.equal(dirty[0].detach().reshape(-1)[others], clean[0].detach().reshape(-1)[others])
    assert torch.equal(dirty[0].detach().reshape(-1)[coordinate], before_param)
    assert not torch.equal(clean[0].detach().reshape(-1)[coordinate], before_param)
    for p, q in zip(dirty[1:], clean[1:]):
        assert torch.equal(p, q)
    dirty_state, clean_state = state_copy(dirty_opt, dirty), state_copy(clean_opt, clean)
    for name in state_names(network.config):
        assert torch.equal(dirty_state[0][name][others], clean_state[0][name][others]), name
        if before_state is None:
            assert not dirty_state[0][name][coordinate].any(), name  # still the fresh all-zero state
        else:
            assert torch.equal(dirty_state[0][name][coordinate], before_state[name][coordinate]), name
        for s, t in zip(dirty_state[1:], clean_state[1:]):
            assert torch.equal(s[name], t[name]), name
    assert all(torch.isfinite(v).all() for s in dirty_state for v in s.values())


def test_nonfinite_coordinates_are_counted_and_warned_about_once() -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network_for("scale_free"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, bad in enumerate([[0, 3], [5], [], [0]]):
            set_grads(params, step)
            for index in bad:
                params[0].grad.view(-1)[index] = float("nan")
            params[1].grad[0] = float("inf") if step == 3 else params[1].grad[0]
            optimizer.step()
    assert optimizer.nonfinite_count == 2 + 1 + 0 + 2
    assert [str(w.message).split(":")[0] for w in caught] == ["LSTMOptimizer"]
    assert "2 gradient coordinate(s) were NaN or inf" in str(caught[0].message)


@pytest.mark.parametrize("bad", list(BAD))
def test_raise_mode_names_the_parameter_and_changes_nothing(bad: str) -> None:
    """The bad gradient is in the second group, so the first group's parameters prove nothing ran before the check."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    named = list(model.named_parameters())
    optimizer = LSTMOptimizer([{"params": named[:2]}, {"params": named[2:], "lr": 0.1}], network_for("scale_free"),
                              nonfinite="raise")
    for _ in range(2):
        model(torch.ones(5, 3)).square().sum().backward()
        optimizer.step()
    model(torch.ones(5, 3)).square().sum().backward()
    model[1].bias.grad[1] = BAD[bad]
    before, weights = snapshot(optimizer), [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteGradientError, match=r"parameter '1\.bias' \(param group 1, parameter 1, shape \(2,\)\)"
                       r"; nothing was updated"):
        optimizer.step()
    assert_same_snapshot(before, snapshot(optimizer))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert optimizer.nonfinite_count == 0


def test_raise_mode_without_names_gives_group_and_index() -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network_for("paper"), nonfinite="raise")
    set_grads(params, 0)
    params[2].grad.fill_(float("nan"))
    with pytest.raises(NonFiniteGradientError, match=r"parameter \(param group 0, parameter 2, shape \(\)\)"):
        optimizer.step()
    assert len(optimizer.state) == 0


def extreme_values(dtype: torch.dtype) -> Tensor:
    """Every kind of finite number of ``dtype``, both signs: zeros, subnormals, tiny, ordinary, huge, the maximum."""
    info = torch.finfo(dtype)
    smallest_subnormal = torch.tensor(1, dtype=torch.int16 if info.bits == 16 else
                                      torch.int32 if info.bits == 32 else torch.int64).view(dtype).item()
    magnitudes = [0.0, smallest_subnormal, info.tiny / 2, info.tiny, 1e-30, 1e-8, 1.0, 1e8, 1e30, info.max]
    values = torch.tensor(magnitudes, dtype=torch.float64).to(dtype)
    assert torch.isfinite(values).all() and (values[1:3] > 0).all()
    return torch.cat([values, -values])


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("weights", ["fresh", "random"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_finite_gradients_across_the_float_range_give_finite_updates_and_state(
        config: str, weights: str, dtype: torch.dtype, state_dtype: torch.dtype) -> None:
    """Each coordinate sees a different extreme every step (rolled), the hardest case for the feature EMAs."""
    values = extreme_values(dtype)
    param = nn.Parameter(torch.zeros(len(values), dtype=dtype))
    optimizer = LSTMOptimizer([param], network_for(config, weights), state_dtype=state_dtype)
    for step in range(4):
        param.grad = values.roll(step * 3)
        start = param.detach().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a skipped coordinate would warn
            optimizer.step()
        assert torch.isfinite(param).all(), f"step {step}: update of {values} gave {param - start}"
        for name, value in optimizer.state[param].items():
            assert not isinstance(value, Tensor) or torch.isfinite(value).all(), f"step {step}: state {name}"
    assert optimizer.nonfinite_count == 0


def test_float16_state_is_refused_for_scale_free_features() -> None:
    with pytest.raises(ValueError, match="float16 cannot hold the scale_free"):
        LSTMOptimizer(make_params(), network_for("scale_free"), state_dtype=torch.float16)
