"""``LSTMOptimizer`` as a torch optimizer: it applies exactly the network's rule, and behaves like torch's own."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from conftest import documented_shape, make_network
from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, NetworkConfig, StateDictError, WeightsError
from torch_lstm_optim.network import state_names
from torch_lstm_optim import optimizer as optimizer_module
from torch_lstm_optim.optimizer import default_chunk_size

SHAPES = [(3, 4), (5,), (), (2, 3, 2)]


def make_params(dtype: torch.dtype = torch.float32, shapes: list[tuple[int, ...]] = SHAPES,
                seed: int = 0) -> list[nn.Parameter]:
    """Parameters with seeded values: calling twice gives two identical, independent sets."""
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]


def set_grads(params: list[Tensor], step: int) -> list[Tensor]:
    """Give every parameter a gradient that depends only on ``step``; return copies of them."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(p.shape, generator=generator).to(p.dtype) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return grads


def run(optimizer: LSTMOptimizer, params: list[Tensor], steps: range) -> list[list[Tensor]]:
    """Take one optimizer step per entry of ``steps``; return the gradients it was given."""
    grads = []
    for step in steps:
        grads.append(set_grads(params, step))
        optimizer.step()
    return grads


def reference(network: CoordinatewiseLSTM, params: list[Tensor], grads_per_step: list[list[Tensor]],
              lrs: list[float], weight_decay: float = 0.0, sign: float = 1.0) -> list[Tensor]:
    """The rule applied by hand, one parameter at a time: ``p += lr * network.step(sign * g + wd * p, state)``."""
    params = [p.detach().clone() for p in params]
    states: list[dict[str, Tensor] | None] = [None] * len(params)
    with torch.no_grad():
        for grads, lr in zip(grads_per_step, lrs, strict=True):
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                g = sign * g.reshape(-1) + weight_decay * p.reshape(-1)
                if states[i] is None:
                    states[i] = network.init_state(g)
                update, states[i] = network.step(g, states[i])
                p.add_(update.to(p.dtype).view_as(p), alpha=lr)
    return params


def assert_close_all(actual: list[Tensor], expected: list[Tensor]) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e.detach())


def assert_equal_all(actual: list[Tensor], expected: list[Tensor]) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and torch.equal(a.detach(), e.detach())


def snapshot(optimizer: LSTMOptimizer) -> dict[str, object]:
    """A deep copy of everything an optimizer holds, to check that a failed call changed nothing."""
    return {"state": {id(p): {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
                      for p, s in optimizer.state.items()},
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]}


def assert_same_snapshot(a: dict[str, object], b: dict[str, object]) -> None:
    assert a["groups"] == b["groups"] and a["state"].keys() == b["state"].keys()
    for key, state in a["state"].items():
        assert state.keys() == b["state"][key].keys()
        for name, value in state.items():
            other = b["state"][key][name]
            assert torch.equal(value, other) if isinstance(value, Tensor) else value == other


# --- the rule -------------------------------------------------------------------------------------------------


def test_step_applies_the_networks_functional_update(any_network: CoordinatewiseLSTM) -> None:
    params = make_params()
    grads = run(LSTMOptimizer(params, any_network, lr=0.3), params, range(3))
    expected = reference(any_network, make_params(), grads, [0.3] * 3)
    assert_close_all(params, expected)
    assert not any(torch.equal(p, q) for p, q in zip(params, make_params()) if p.numel())


def test_state_is_created_lazily_with_shapes_from_numel(any_network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, any_network)
    assert len(optimizer.state) == 0
    run(optimizer, params, range(2))
    for p in params:
        state = optimizer.state[p]
        assert set(state) == set(state_names(any_network.config)) | {"step"}
        assert state["step"] == 2
        for name in state_names(any_network.config):
            shape = documented_shape((p.numel(),), any_network.config, name)
            assert state[name].shape == shape and state[name].dtype == torch.float32, name


@pytest.mark.parametrize("chunk_size", [1, 7, 10**6])
def test_chunking_does_not_change_the_result(any_network: CoordinatewiseLSTM, chunk_size: int) -> None:
    params = make_params()
    grads = run(LSTMOptimizer(params, any_network, chunk_size=chunk_size), params, range(3))
    assert_close_all(params, reference(any_network, make_params(), grads, [1.0] * 3))


@pytest.mark.parametrize(("hidden_size", "expected"), [(20, 2048), (64, 2048), (16, 4096), (8, 8192), (1, 65536)])
def test_default_chunk_grows_as_the_rule_narrows(hidden_size: int, expected: int) -> None:
    """On CPU one chunk's gates stay within 1 MiB (2048 for the paper's width, as measured best there); a narrower
    rule gets bigger chunks, since its per-chunk overhead dominates; accelerators get 65536 whatever the width."""
    config = NetworkConfig(hidden_size=hidden_size)
    assert default_chunk_size(torch.device("cpu"), config) == expected
    assert default_chunk_size(torch.device("cpu")) == 2048
    assert default_chunk_size(torch.device("meta"), config) == 65536


@pytest.mark.parametrize(("hidden_size", "lstm_every", "expected"), [(20, 2, 4096), (20, 8, 16384), (20, 64, 16384),
                                                                     (1, 8, 65536)])
def test_default_chunk_grows_as_the_lstm_runs_less_often(hidden_size: int, lstm_every: int, expected: int) -> None:
    """A rule whose LSTM runs every K steps gets chunks K times larger, up to 16384, never smaller than without, and
    4 times that on the steps between the LSTM's, whose temporaries are the features' alone."""
    config = NetworkConfig(hidden_size=hidden_size, preprocessing="scale_free", output="momentum_mix",
                           lstm_every=lstm_every)
    assert default_chunk_size(torch.device("cpu"), config) == expected
    assert default_chunk_size(torch.device("cpu"), config, lstm_runs=False) == 4 * expected


def test_the_steps_between_the_lstms_take_the_larger_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    network = make_network(preprocessing="scale_free", output="momentum_mix", lstm_every=3)
    sizes = []
    chunks = optimizer_module._chunks
    monkeypatch.setattr(optimizer_module, "_chunks",
                        lambda segments, size: sizes.append(size) or chunks(segments, size))
    params = make_params()
    run(LSTMOptimizer(params, network), params, range(5))
    small = default_chunk_size(torch.device("cpu"), network.config)
    assert sizes == [small, 4 * small, 4 * small, small, 4 * small]


def test_lr_scheduler_scales_the_update(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network, lr=0.8)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    grads = []
    for step in range(3):
        grads.append(set_grads(params, step))
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert_close_all(params, reference(network, make_params(), grads, [0.8, 0.4, 0.2]))


def test_lr_zero_moves_nothing_but_advances_the_state(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network, lr=0.0)
    run(optimizer, params, range(1))
    assert_equal_all(params, make_params())
    assert optimizer.state[params[0]]["h1"].abs().sum() > 0


def test_step_returns_the_closures_loss_and_uses_its_gradients(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network)
    calls = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = sum((p ** 2).sum() for p in params)
        loss.backward()
        calls.append(loss.item())
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, Tensor) and loss.item() == calls[0] and len(calls) == 1
    start = make_params()
    assert_close_all(params, reference(network, start, [[2 * p.detach() for p in start]], [1.0]))
    assert optimizer.step() is None


def test_param_groups_use_their_own_lr_and_weight_decay(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer([{"params": params[:2]}, {"params": params[2:], "lr": 0.1, "weight_decay": 0.5}],
                              network, lr=2.0)
    grads = run(optimizer, params, range(2))
    start = make_params()
    assert_close_all(params[:2], reference(network, start[:2], [g[:2] for g in grads], [2.0, 2.0]))
    assert_close_all(params[2:], reference(network, start[2:], [g[2:] for g in grads], [0.1, 0.1], weight_decay=0.5))


def test_maximize_feeds_the_negated_gradient(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    grads = run(LSTMOptimizer(params, network, maximize=True, weight_decay=0.1), params, range(2))
    assert_close_all(params, reference(network, make_params(), grads, [1.0, 1.0], weight_decay=0.1, sign=-1.0))


def test_zero_grad_clears_gradients(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network)
    set_grads(params, 0)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


# --- which parameters, which dtypes and layouts ----------------------------------------------------------------


def test_parameters_without_grad_are_skipped(network: CoordinatewiseLSTM) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, network)
    set_grads(params, 0)
    params[1].grad = None
    optimizer.step()
    assert params[1] not in optimizer.state and torch.equal(params[1], make_params()[1])
    assert all(p in optimizer.state for i, p in enumerate(params) if i != 1)


def test_sparse_gradient_raises_a_clear_error(network: CoordinatewiseLSTM) -> None:
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = LSTMOptimizer(embedding.parameters(), network)
    embedding(torch.tensor([1, 2])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()
    assert torch.equal(embedding.weight, before) and len(optimizer.state) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_parameter_dtypes_keep_their_dtype_and_a_float32_state(network: CoordinatewiseLSTM,
                                                               dtype: torch.dtype) -> None:
    params = make_params(dtype)
    grads = run(LSTMOptimizer(params, network), params, range(2))
    for p in params:
        assert p.dtype == dtype
    assert_close_all(params, reference(network, make_params(dtype), grads, [1.0, 1.0]))


def test_complex_parameters_step_as_their_real_and_imaginary_parts(any_network: CoordinatewiseLSTM) -> None:
    """As in torch's own optimizers: a complex parameter is the real parameter ``view_as_real(p)``, never truncated."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 2, dtype=torch.complex64, generator=generator)
    complex_param, real_param = nn.Parameter(values.clone()), nn.Parameter(torch.view_as_real(values).clone())
    complex_opt = LSTMOptimizer([complex_param], any_network, lr=0.5, weight_decay=0.1)
    real_opt = LSTMOptimizer([real_param], any_network, lr=0.5, weight_decay=0.1)
    for _ in range(3):
        grad = torch.randn(3, 2, dtype=torch.complex64, generator=generator)
        complex_param.grad, real_param.grad = grad.clone(), torch.view_as_real(grad).clone()
        complex_opt.step()
        real_opt.step()
    assert complex_param.dtype == torch.complex64
    assert torch.equal(torch.view_as_real(complex_param.detach()), real_param.detach())
    assert not torch.equal(complex_param.detach().imag, values.imag)
    for name in state_names(any_network.config):
        assert torch.equal(complex_opt.state[complex_param][name], real_opt.state[real_param][name]), name
    restored = LSTMOptimizer([nn.Parameter(complex_param.detach().clone())], any_network)
    restored.load_state_dict(roundtrip(complex_opt.state_dict()))


def test_state_dtype_argument_sets_the_state_dtype(network: CoordinatewiseLSTM) -> None:
    params = make_params(torch.bfloat16)
    optimizer = LSTMOptimizer(params, network, state_dtype=torch.float64)
    run(optimizer, params, range(1))
    assert all(v.dtype == torch.float64 for v in optimizer.state[params[0]].values() if isinstance(v, Tensor))


def test_non_contiguous_parameters_update_like_contiguous_ones(network: CoordinatewiseLSTM) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    transposed = nn.Parameter(torch.randn(5, 3).t())
    weird = [conv.weight, transposed]
    assert not any(p.is_contiguous() for p in weird)
    strides = [p.stride() for p in weird]
    start = [p.detach().clone() for p in weird]
    plain = [nn.Parameter(p.detach().contiguous()) for p in weird]
    for params in (weird, plain):
        run(LSTMOptimizer(params, network), params, range(2))
    assert [p.stride() for p in weird] == strides
    assert_equal_all(weird, plain)
    assert not any(torch.equal(p, s) for p, s in zip(weird, start))


# --- state_dict ------------------------------------------------------------------------------------------------


def roundtrip(state_dict: dict[str, object]) -> dict[str, object]:
    """Save and load as a user would, through ``torch.save`` and the safe ``weights_only=True`` loader."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_restored_state_continues_bit_identically(any_network: CoordinatewiseLSTM, dtype: torch.dtype) -> None:
    params = make_params(dtype)
    optimizer = LSTMOptimizer(params, any_network, lr=0.5, chunk_size=7)
    run(optimizer, params, range(3))
    saved_params, saved_state = [p.detach().clone() for p in params], roundtrip(optimizer.state_dict())
    run(optimizer, params, range(3, 6))

    resumed = [nn.Parameter(p.clone()) for p in saved_params]
    optimizer = LSTMOptimizer(resumed, any_network, lr=0.5, chunk_size=7)
    optimizer.load_state_dict(saved_state)
    for p in resumed:
        assert optimizer.state[p]["step"] == 3
        assert all(v.dtype == torch.float32 for v in optimizer.state[p].values() if isinstance(v, Tensor))
    run(optimizer, resumed, range(3, 6))
    assert_equal_all(resumed, params)


def test_state_dict_records_the_network_config(network: CoordinatewiseLSTM) -> None:
    optimizer = LSTMOptimizer(make_params(), network)
    assert optimizer.state_dict()["network"]["config"] == network.config.to_dict()


def trained_optimizer(network: CoordinatewiseLSTM, shapes: list[tuple[int, ...]] = SHAPES) -> LSTMOptimizer:
    params = make_params(shapes=shapes)
    optimizer = LSTMOptimizer(params, network)
    run(optimizer, params, range(2))
    return optimizer


def test_load_state_dict_of_another_network_raises_and_changes_nothing(network: CoordinatewiseLSTM) -> None:
    optimizer = trained_optimizer(network)
    other = trained_optimizer(make_network(hidden_size=5)).state_dict()
    before = snapshot(optimizer)
    with pytest.raises(StateDictError, match="another network"):
        optimizer.load_state_dict(roundtrip(other))
    assert_same_snapshot(before, snapshot(optimizer))


@pytest.mark.parametrize("shapes", [
    [(4, 3), (5,), (), (2, 3, 2)],   # same numel per group, other numel per parameter
    [(3, 4), (5,), ()],              # one parameter fewer
])
def test_load_state_dict_for_other_parameter_shapes_raises_and_changes_nothing(
        network: CoordinatewiseLSTM, shapes: list[tuple[int, ...]]) -> None:
    optimizer = trained_optimizer(network, [(3, 5), (5,), (), (2, 3, 2)])
    before = snapshot(optimizer)
    with pytest.raises(StateDictError):
        optimizer.load_state_dict(roundtrip(trained_optimizer(network, shapes).state_dict()))
    assert_same_snapshot(before, snapshot(optimizer))


@pytest.mark.parametrize("corrupt", ["missing_key", "nan", "bad_step", "not_a_state_dict"])
def test_load_state_dict_with_a_corrupt_entry_raises_and_changes_nothing(network: CoordinatewiseLSTM,
                                                                         corrupt: str) -> None:
    optimizer = trained_optimizer(network)
    state_dict = roundtrip(trained_optimizer(network).state_dict())
    entry = state_dict["state"][0]
    if corrupt == "missing_key":
        del entry["c1"]
    elif corrupt == "nan":
        entry["h0"][0, 0] = float("nan")
    elif corrupt == "bad_step":
        entry["step"] = -1
    else:
        state_dict = {"state": state_dict["state"]}
    before = snapshot(optimizer)
    with pytest.raises(StateDictError):
        optimizer.load_state_dict(state_dict)
    assert_same_snapshot(before, snapshot(optimizer))


# --- constructor arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"), (dict(lr="0.1"), "learning rate"), (dict(lr=True), "learning rate"),
    (dict(lr=float("nan")), "learning rate"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(weight_decay=True), "weight_decay"),
    (dict(chunk_size=0), "chunk_size"), (dict(chunk_size=2.5), "chunk_size"), (dict(chunk_size=True), "chunk_size"),
    (dict(state_dtype=torch.int32), "state_dtype"), (dict(nonfinite="ignore"), "nonfinite"),
])
def test_bad_constructor_arguments_raise_clear_errors(network: CoordinatewiseLSTM, kwargs: dict[str, object],
                                                      match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LSTMOptimizer(make_params(), network, **kwargs)


def test_empty_parameter_list_raises(network: CoordinatewiseLSTM) -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        LSTMOptimizer([], network)


@pytest.mark.parametrize("weights", ["no-such-weights", "./no/such/folder", 42])
def test_unknown_weights_raise_weights_error(weights: object) -> None:
    with pytest.raises((WeightsError, TypeError)):
        LSTMOptimizer(make_params(), weights)


def test_default_weights_say_they_are_not_shipped_yet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("torch_lstm_optim.weights.bundled_root", lambda: tmp_path)
    with pytest.raises(WeightsError, match="default weights .* are not bundled"):
        LSTMOptimizer(make_params())


def test_bfloat16_state_keeps_an_exact_step_count() -> None:
    """bfloat16 counts only to 256: the scale_free step count must stay float32 (and survive a state_dict)."""
    param = torch.zeros(3, requires_grad=True)
    optimizer = LSTMOptimizer([param], weights=make_network(preprocessing="scale_free"), state_dtype=torch.bfloat16)
    for _ in range(300):
        param.grad = torch.ones(3)
        optimizer.step()
    state = optimizer.state[param]
    assert state["t"].dtype == torch.float32 and state["t"].tolist() == [300.0] * 3
    assert state["h0"].dtype == torch.bfloat16
    restored = LSTMOptimizer([param], weights=optimizer.network, state_dtype=torch.bfloat16)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.state[param]["t"].dtype == torch.float32


def test_bfloat16_state_follows_a_shrinking_gradient() -> None:
    """The EMA of g^2 (decay 0.999) is kept in float32: in bfloat16 it could only grow, and after the gradients
    shrink tenfold the rule would keep stepping as if they had not."""
    states = []
    for dtype in (torch.float32, torch.bfloat16):
        param = torch.zeros(4, requires_grad=True)
        optimizer = LSTMOptimizer([param], weights=make_network(preprocessing="scale_free"), state_dtype=dtype)
        for t in range(3000):
            param.grad = torch.full((4,), 1.0 if t < 1000 else 0.1)
            optimizer.step()
        states.append(optimizer.state[param])
    assert states[1]["v"].dtype == torch.float32 and states[1]["h0"].dtype == torch.bfloat16
    torch.testing.assert_close(states[1]["v"], states[0]["v"], rtol=1e-3, atol=0)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_or_pickled_optimizer_steps_like_the_original(any_network: CoordinatewiseLSTM, how: str) -> None:
    params = make_params()
    optimizer = LSTMOptimizer(params, weights=any_network, lr=0.5, chunk_size=3)
    run(optimizer, params, range(2))
    if how == "deepcopy":
        copied = copy.deepcopy(optimizer)
    else:
        buffer = io.BytesIO()
        torch.save(optimizer, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
    copies = [p for group in copied.param_groups for p in group["params"]]
    assert all(c is not p and torch.equal(c, p) for c, p in zip(copies, params))
    assert copied.param_groups[0]["lr"] == 0.5
    assert copied.chunk_size == 3 and copied.state_dtype == optimizer.state_dtype
    run(optimizer, params, range(2, 4))
    run(copied, copies, range(2, 4))
    for c, p in zip(copies, params):
        torch.testing.assert_close(c, p, rtol=0, atol=0)
    assert all(torch.equal(copied.state[c][k], optimizer.state[p][k]) for c, p in zip(copies, params)
               for k in optimizer.state[p] if k != "step")


def test_load_state_dict_restores_what_a_pre_hook_returns_and_post_hooks_see_it(
        any_network: CoordinatewiseLSTM) -> None:
    """torch's load hooks: a pre-hook may return a new state dict, which is then what is checked and restored exactly;
    each hook runs once, and a post-hook sees the restored state."""
    model = torch.nn.Linear(3, 2)
    optimizer = LSTMOptimizer(model.parameters(), weights=any_network)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    calls: list[str] = []

    def pre_hook(opt: LSTMOptimizer, state_dict: dict) -> dict:
        calls.append("pre")
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"][0]["h0"] = torch.full_like(state_dict["state"][0]["h0"], 0.25)
        return state_dict

    def post_hook(opt: LSTMOptimizer) -> None:
        calls.append("post")
        assert (opt.state[model.weight]["h0"] == 0.25).all()

    optimizer.register_load_state_dict_pre_hook(pre_hook)
    optimizer.register_load_state_dict_post_hook(post_hook)
    optimizer.load_state_dict(saved)
    assert calls == ["pre", "post"]
    assert (optimizer.state[model.weight]["h0"] == 0.25).all()
    assert not (saved["state"][0]["h0"] == 0.25).all()  # the caller's dict is left alone
