"""The network's ONE update rule: gradient features, and ``step`` as a pure function usable with and without
autograd."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import SMALL, documented_shape, make_network
from torch_lstm_optim import CoordinatewiseLSTM, NetworkConfig
from torch_lstm_optim.network import state_names

P = 10.0
THRESHOLD = math.exp(-P)


def log_sign(grad: torch.Tensor, network: CoordinatewiseLSTM) -> torch.Tensor:
    features, accumulators = network.features(grad, {})
    assert accumulators == {}
    return features


def test_log_sign_matches_the_paper_on_both_sides_of_the_threshold(network: CoordinatewiseLSTM) -> None:
    # float64 so the values right next to e^-p are representable.
    at = torch.tensor(THRESHOLD, dtype=torch.float64)
    below = torch.nextafter(at, torch.tensor(0.0, dtype=torch.float64))
    above = torch.nextafter(at, torch.tensor(1.0, dtype=torch.float64))
    grad = torch.stack([at, -at, above, below, -below, torch.tensor(0.5, dtype=torch.float64)])
    features = log_sign(grad, network)
    expected = torch.tensor([
        [-1.0, 1.0],                                  # |g| = e^-p is on the log side: (log|g|/p, sign g)
        [-1.0, -1.0],
        [math.log(above.item()) / P, 1.0],
        [-1.0, math.exp(P) * below.item()],           # |g| < e^-p: (-1, e^p g)
        [-1.0, -math.exp(P) * below.item()],
        [math.log(0.5) / P, 1.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(features, expected, rtol=1e-12, atol=1e-12)
    # Away from the threshold the two branches differ, so each side is seen to take its own branch.
    features = log_sign(torch.tensor([0.5 * THRESHOLD, 2 * THRESHOLD], dtype=torch.float64), network)
    torch.testing.assert_close(features, torch.tensor([[-1.0, 0.5], [-1 + math.log(2) / P, 1.0]], dtype=torch.float64))


def test_log_sign_is_continuous_across_the_threshold(network: CoordinatewiseLSTM) -> None:
    grad = THRESHOLD * torch.tensor([1 - 1e-9, 1.0, 1 + 1e-9], dtype=torch.float64)
    features = log_sign(grad, network)
    torch.testing.assert_close(features, torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float64), rtol=0, atol=1e-8)


def test_log_sign_of_zero_tiny_and_huge_values_is_finite(network: CoordinatewiseLSTM) -> None:
    tiny = torch.finfo(torch.float32).tiny
    subnormal = 1e-45
    huge = torch.finfo(torch.float32).max
    grad = torch.tensor([0.0, -0.0, subnormal, -tiny, 1e-30, 1e30, -huge], dtype=torch.float32)
    features = log_sign(grad, network)
    assert torch.isfinite(features).all()
    assert features[0].tolist() == [-1.0, 0.0] and features[1].tolist() == [-1.0, 0.0]
    assert features[2, 0] == -1.0 and 0 < features[2, 1] < 1e-30
    assert features[3, 0] == -1.0 and -1e-30 < features[3, 1] < 0
    torch.testing.assert_close(features[5], torch.tensor([math.log(1e30) / P, 1.0]))
    torch.testing.assert_close(features[6], torch.tensor([math.log(huge) / P, -1.0]))


def test_log_sign_uses_the_configured_p() -> None:
    network = make_network(p=5.0)
    features = log_sign(torch.tensor([math.exp(-6.0), math.exp(-4.0)], dtype=torch.float64), network)
    torch.testing.assert_close(features, torch.tensor([[-1.0, math.exp(-1.0)], [-0.8, 1.0]], dtype=torch.float64))


def test_scale_free_features_are_invariant_to_the_gradient_scale() -> None:
    network = make_network(preprocessing="scale_free")
    grads = [torch.randn(50) for _ in range(4)]
    results = []
    for scale in (1.0, 1e-6, 1e6):
        state = network.init_state(grads[0] * scale)
        features = []
        for grad in grads:
            x, accumulators = network.features(grad * scale, state)
            state = {**state, **accumulators}
            features.append(x)
        results.append(torch.stack(features))
    assert results[0].shape == (4, 50, 1 + len(network.config.betas))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[2], results[0], rtol=1e-4, atol=1e-5)


def test_scale_free_features_are_clipped_and_finite_for_zero_and_huge_gradients() -> None:
    network = make_network(preprocessing="scale_free", feature_clip=3.0)
    # A long history of gradients of 1e-3, then a sudden jump: g / rms is far above the clip where it jumps.
    state = {**network.init_state(torch.zeros(4)), "v": torch.full((4,), 1e-6), "t": torch.full((4,), 100.0)}
    state.update({f"m{i}": torch.full((4,), 1e-3) for i in range(len(network.config.betas))})
    x, accumulators = network.features(torch.tensor([0.0, 1e-3, 1e3, 1e30]), state)
    assert torch.isfinite(x).all() and x.abs().max() == 3.0
    assert x[0, 0] == 0.0 and x[2, 0] == 3.0 and x[3, 0] == 3.0 and 0 < x[1, 0] < 3.0
    assert all(torch.isfinite(v).all() for v in accumulators.values())
    assert set(accumulators) == {"m0", "m1", "m2", "v", "t"}
    assert accumulators["t"].tolist() == [101.0] * 4


def test_step_returns_update_and_state_of_the_documented_shapes(any_network: CoordinatewiseLSTM) -> None:
    grad = torch.randn(13)
    update, state = any_network.step(grad, any_network.init_state(grad))
    assert update.shape == (13,) and update.dtype == torch.float32 and torch.isfinite(update).all()
    assert set(state) == set(state_names(any_network.config))
    for name, value in state.items():
        assert value.shape == documented_shape((13,), any_network.config, name), name


def test_step_is_pure(any_network: CoordinatewiseLSTM) -> None:
    grad = torch.randn(9)
    state = any_network.init_state(grad)
    state, grad_before = {k: v + 0.1 * torch.randn_like(v) for k, v in state.items()}, grad.clone()
    before = {k: v.clone() for k, v in state.items()}
    _, new_state = any_network.step(grad, state)
    assert torch.equal(grad, grad_before)
    for name, value in state.items():
        assert torch.equal(value, before[name]), name
        # New tensors, or (lstm_every's steps between the LSTM's) the very tensors it left unchanged.
        assert new_state[name] is value or new_state[name].data_ptr() != value.data_ptr(), name


def test_lstm_layers_are_torchs_lstm_cell(any_network: CoordinatewiseLSTM) -> None:
    """Each layer is ``torch.nn.LSTMCell`` with the same weights (gate order i, f, g, o), to float rounding: the
    step's sigmoid form of tanh (network.py) changes no more than 2e-7 of a state of size about 1."""
    torch.manual_seed(0)
    grad = torch.randn(200) * 10.0 ** torch.randint(-6, 3, (200,))
    state = {k: (torch.randn_like(v) * 3 if k[0] in "hc" else v) for k, v in any_network.init_state(grad).items()}
    _, new_state = any_network.step(grad, state)
    hidden, _ = any_network.features(grad, state)
    for index, layer in enumerate(any_network.layers):
        cell = torch.nn.LSTMCell(hidden.shape[1], any_network.config.hidden_size)
        with torch.no_grad():
            n = hidden.shape[1]
            cell.weight_ih.copy_(layer.weight[:, :n])
            cell.weight_hh.copy_(layer.weight[:, n:])
            cell.bias_ih.copy_(layer.bias)
            cell.bias_hh.zero_()
            h, c = cell(hidden, (state[f"h{index}"], state[f"c{index}"]))
        torch.testing.assert_close(new_state[f"c{index}"], c, rtol=0, atol=1e-6)
        torch.testing.assert_close(new_state[f"h{index}"], h, rtol=0, atol=1e-6)
        hidden = h


def test_step_is_batched_coordinatewise(any_network: CoordinatewiseLSTM) -> None:
    """Coordinates do not interact: the update of a batch equals the updates of its pieces."""
    grad = torch.randn(10)
    state = any_network.init_state(grad)
    whole, _ = any_network.step(grad, state)
    pieces = [any_network.step(grad[i:i + 3], {k: v[i:i + 3] for k, v in state.items()})[0] for i in range(0, 10, 3)]
    torch.testing.assert_close(torch.cat(pieces), whole)


def test_step_with_autograd_reaches_every_network_weight(any_network: CoordinatewiseLSTM) -> None:
    # A head started as a classic rule ignores h (zero weights), so the LSTM gets gradients only from the
    # first meta-update on; a trained head reads h.
    torch.nn.init.normal_(any_network.head.weight, std=0.1)
    grad = torch.randn(20)
    state = any_network.init_state(grad)
    total = torch.zeros(())
    for _ in range(3):  # an unroll: the second and third steps differentiate through the carried state
        update, state = any_network.step(grad, state)
        total = total + update.square().sum()
    total.backward()
    for name, weight in any_network.named_parameters():
        assert weight.grad is not None and torch.isfinite(weight.grad).all(), name
        assert weight.grad.abs().sum() > 0, name


def test_step_under_no_grad_builds_no_graph(network: CoordinatewiseLSTM) -> None:
    grad = torch.randn(5)
    with torch.no_grad():
        update, state = network.step(grad, network.init_state(grad))
    assert not update.requires_grad and not any(v.requires_grad for v in state.values())
    torch.testing.assert_close(update, network.step(grad, network.init_state(grad))[0].detach())


def test_step_computes_in_the_network_dtype_whatever_the_gradient_dtype(network: CoordinatewiseLSTM) -> None:
    grad = torch.randn(6)
    expected, _ = network.step(grad, network.init_state(grad))
    for dtype in (torch.float64, torch.bfloat16):
        cast = grad.to(dtype)
        update, state = network.step(cast, network.init_state(cast))
        assert update.dtype == torch.float32 and all(v.dtype == torch.float32 for v in state.values())
        torch.testing.assert_close(update, network.step(cast.float(), network.init_state(cast))[0])
    torch.testing.assert_close(network.step(grad.double(), network.init_state(grad))[0], expected)


def test_init_state_is_all_zero_in_the_asked_dtype(any_network: CoordinatewiseLSTM) -> None:
    state = any_network.init_state(torch.randn(4), dtype=torch.float64)
    assert set(state) == set(state_names(any_network.config))
    for name, value in state.items():
        shape = documented_shape((4,), any_network.config, name)
        dtype = torch.float32 if name == "t" else torch.float64  # the step count stays exact
        assert value.shape == shape and value.dtype == dtype and not value.any(), name


def test_output_scale_multiplies_the_linear_head() -> None:
    small, big = make_network(seed=3, output_scale=0.1), make_network(seed=3, output_scale=0.5)
    grad = torch.randn(7)
    torch.testing.assert_close(big.step(grad, big.init_state(grad))[0],
                               5 * small.step(grad, small.init_state(grad))[0])


def test_direction_magnitude_output_starts_as_a_descent_direction() -> None:
    network = make_network(preprocessing="scale_free", output="direction_magnitude")
    grad = torch.randn(30)
    update, _ = network.step(grad, network.init_state(grad))
    assert (update * grad < 0).all()
    bound = network.config.output_scale * math.exp(network.config.magnitude_bound)
    assert update.abs().max() <= bound


@pytest.mark.parametrize("field, value", [
    ("hidden_size", 0), ("hidden_size", 10**9), ("hidden_size", 2.0), ("hidden_size", True),
    ("num_layers", 0), ("num_layers", 100), ("preprocessing", "adam"), ("output", "tanh"),
    ("p", 0.0), ("p", float("nan")), ("output_scale", float("inf")), ("output_scale", -1.0),
    ("betas", (1.0,)), ("betas", ()), ("beta_v", -0.1), ("feature_clip", "10"),
    ("warmup_steps", 20), ("warmup_steps", 2.5), ("param_scale_feature", True), ("param_scale_feature", 1),
    ("param_rms_floor", 0.0), ("lstm_every", 0), ("lstm_every", 4), ("lstm_every", 2.0),
])
def test_config_refuses_bad_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        NetworkConfig(**{field: value})


def test_config_round_trips_through_a_dict() -> None:
    config = NetworkConfig(hidden_size=5, preprocessing="scale_free", betas=[0.5, 0.9])
    assert config.betas == (0.5, 0.9)
    assert NetworkConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("output", ["direction_magnitude", "momentum_mix"])
@pytest.mark.parametrize("nesterov_lr", [0.1, 1.0])
def test_nag_head_is_sgd_with_nesterov_momentum(nesterov_lr: float, output: str) -> None:
    """init_head("nag", lr) makes the untrained network exactly torch's SGD(momentum=0.9, nesterov=True)."""
    network = make_network(preprocessing="scale_free", log_rms_feature=True, log_step_feature=True,
                           output=output, output_scale=0.03, magnitude_bound=25.0)
    network.init_head("nag", nesterov_lr)
    grads = torch.randn(8, 30, dtype=torch.float64) * torch.logspace(-4, 1, 30, dtype=torch.float64)
    reference = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    sgd = torch.optim.SGD([reference], lr=nesterov_lr, momentum=0.9, nesterov=True)
    theta = torch.zeros(30, dtype=torch.float64)
    state = network.init_state(grads[0])
    for grad in grads:
        reference.grad = grad.clone()
        sgd.step()
        with torch.no_grad():
            update, state = network.step(grad, state)
        theta += update.double()
    torch.testing.assert_close(theta, reference.detach(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("form", [dict(output="direction_magnitude"),
                                  dict(output="momentum_mix", level_feature=True, log_step_feature=True)])
def test_adam_head_follows_the_momentum_at_the_given_lr(form: dict) -> None:
    """Whatever the LSTM's weights (the head ignores h at the start) and, for momentum_mix, with kappa at
    sigmoid(-3) and rho = 1 for a constant gradient."""
    network = make_network(preprocessing="scale_free", output_scale=0.01, **form)
    network.init_head("adam", 0.1)
    torch.nn.init.normal_(network.layers[0].weight)
    grad = torch.randn(20)
    state = network.init_state(grad)
    for _ in range(50):
        with torch.no_grad():
            update, state = network.step(grad, state)
    # A constant gradient: the bias-corrected rms is |g|, the zero-started momentum (1 - 0.9^t) g.
    torch.testing.assert_close(update, -0.1 * (1 - 0.9 ** 50) * grad.sign(), rtol=1e-5, atol=1e-7)


def test_any_betas_give_a_working_start() -> None:
    """Without 0.9 among the betas the head starts from the nearest momentum (weights of any config must load)."""
    network = make_network(preprocessing="scale_free", log_rms_feature=True, output="direction_magnitude",
                           betas=(0.5, 0.8))
    direction = network.head.weight[0, network.config.hidden_size:]
    assert direction.tolist() == [0.0, 0.0, -1.0, 0.0]
    network.init_head("nag", 1.0)
    assert network.head.weight[0, network.config.hidden_size:].tolist() == pytest.approx([-1.0, 0.0, -4.0, 0.0])


def test_init_head_refuses_rules_the_config_cannot_express() -> None:
    with pytest.raises(ValueError, match="needs output='direction_magnitude'"):
        make_network().init_head("adam", 0.1)
    with pytest.raises(ValueError, match="'nag' with log_rms_feature"):
        make_network(preprocessing="scale_free", output="direction_magnitude").init_head("nag", 1.0)


MIX = dict(preprocessing="scale_free", output="momentum_mix", level_feature=True, log_step_feature=True)


@pytest.mark.parametrize("form", [MIX, dict(preprocessing="scale_free", output="direction_magnitude")])
def test_a_zero_gradient_history_moves_nothing(form: dict) -> None:
    """The zero-gradient contract is the rule's form: with random weights (nonzero gate biases and head), a
    coordinate whose gradients have all been zero gets an update of exactly 0, beside coordinates that do move."""
    network = make_network(seed=5, **form)
    torch.nn.init.normal_(network.head.weight)
    torch.nn.init.normal_(network.head.bias)
    grad = torch.tensor([0.0, 0.0, 1.0, -3e-6])
    state = network.init_state(grad)
    for _ in range(3):
        update, state = network.step(grad, state)
        assert update[:2].tolist() == [0.0, 0.0] and (update[2:] != 0).all()


def test_level_feature_measures_the_fall_from_the_peak_whatever_the_scale() -> None:
    network = make_network(**MIX)
    grads = [torch.tensor([2.0, 2e-7])] * 30 + [torch.tensor([2e-6, 2e-13])] * 400
    state = network.init_state(grads[0])
    for grad in grads:
        features, state = network.features(grad, state)
    level = features[:, -1].tolist()
    assert level[0] == pytest.approx(level[1], abs=1e-3)  # scale-free: the two coordinates differ by 1e7
    assert level[0] == pytest.approx(math.log(1e-6), abs=1e-3)  # the fast rms has settled at 1e-6 of its peak
    assert features[:, :1].abs().max() < 1e-3  # while g / rms (long memory) has gone to ~0


def test_kappa_one_shrinks_the_step_with_the_gradient() -> None:
    """With kappa -> 1 the step follows the gradient's size (SGD-like): far below the stride's lower bound."""
    network = make_network(output_scale=0.01, **MIX)
    network.init_head("adam", 0.01)
    with torch.no_grad():
        network.head.bias[-1] = 30.0  # kappa = 1
    grads = [torch.ones(3)] * 20 + [torch.full((3,), 1e-9)] * 200
    state = network.init_state(grads[0])
    for grad in grads:
        with torch.no_grad():
            update, state = network.step(grad, state)
    floor = 0.01 * math.exp(-network.config.magnitude_bound)
    assert 0 < -update.max() < floor * 1e-3


def test_configs_without_the_added_fields_load_as_before() -> None:
    data = NetworkConfig().to_dict()
    del data["level_feature"], data["level_beta"], data["warmup_steps"], data["param_scale_feature"]
    del data["param_rms_floor"]
    # the floor only matters with param_scale_feature; the first such networks were trained with 1e-3
    assert NetworkConfig.from_dict(data) == NetworkConfig(param_rms_floor=1e-3)
    with pytest.raises(ValueError, match="missing fields \\['hidden_size'\\]"):
        NetworkConfig.from_dict({k: v for k, v in NetworkConfig().to_dict().items() if k != "hidden_size"})


@pytest.mark.parametrize("config", [dict(output="momentum_mix"), dict(level_feature=True),
                                    dict(preprocessing="scale_free", level_beta=1.0)])
def test_config_refuses_the_momentum_mix_without_its_features(config: dict) -> None:
    with pytest.raises(ValueError, match="momentum_mix|level"):
        NetworkConfig(**config)


@pytest.mark.parametrize("output", ["linear", "direction_magnitude", "momentum_mix"])
def test_warmup_scales_each_coordinates_first_updates(output: str) -> None:
    """With ``warmup_steps=4`` a coordinate's t-th update is ``min(1, t/4)`` times the rule's without it, counted
    per coordinate (one that joins later starts its own warm-up); the state is the same."""
    form = dict(preprocessing="scale_free", output=output, level_feature=output == "momentum_mix")
    plain = CoordinatewiseLSTM(NetworkConfig(**form))
    warm = CoordinatewiseLSTM(NetworkConfig(**form, warmup_steps=4))
    warm.load_state_dict(plain.state_dict())
    torch.manual_seed(0)
    state_plain, state_warm = plain.init_state(torch.zeros(5)), warm.init_state(torch.zeros(5))
    state_warm["t"][0] = 10.0  # this coordinate is past its warm-up
    state_plain["t"][0] = 10.0
    with torch.no_grad():
        for t in range(1, 7):
            grad = torch.randn(5)
            update_plain, state_plain = plain.step(grad, state_plain)
            update_warm, state_warm = warm.step(grad, state_warm)
            factor = torch.tensor([1.0] + [min(1.0, t / 4)] * 4)
            torch.testing.assert_close(update_warm, update_plain * factor)
            for k in state_plain:
                torch.testing.assert_close(state_warm[k], state_plain[k])


def test_param_scale_feature_is_the_floored_log_rms_and_is_required() -> None:
    """The feature is ``log max(rms, floor)`` of each coordinate's tensor, placed after the level (which the head
    finds by name); the step refuses to run without it, and with it two coordinates of equal gradients but tensors
    of other sizes get other steps. A config written before the floor was a field keeps the 1e-3 it was trained
    with."""
    config = dict(preprocessing="scale_free", output="momentum_mix", level_feature=True)
    network = CoordinatewiseLSTM(NetworkConfig(**config, param_scale_feature=True))
    assert network.config.feature_names[-2:] == ["level", "log_param_rms"]
    grad, rms = torch.ones(3), torch.tensor([0.0, 1e-2, 4.0])
    x, _ = network.features(grad, network.init_state(grad), rms)
    torch.testing.assert_close(x[:, -1], torch.tensor([1e-2, 1e-2, 4.0]).log())
    old = {k: v for k, v in network.config.to_dict().items() if k != "param_rms_floor"}
    assert NetworkConfig.from_dict(old).param_rms_floor == 1e-3
    with pytest.raises(ValueError, match="param_rms"):
        network.step(grad, network.init_state(grad))
    with torch.no_grad():
        network.head.weight[network.config.num_directions, -1] = 1.0  # the log step size follows the scale
        update, _ = network.step(grad, network.init_state(grad), rms)
    torch.testing.assert_close(update / update[1], torch.tensor([1.0, 1.0, 400.0]))


def test_lstm_every_runs_the_lstm_on_every_kth_step_and_applies_its_last_outputs_between() -> None:
    """With ``lstm_every=3`` the LSTM's state changes only on a coordinate's steps 1, 4, 7, ...; on those steps the
    update is the plain rule's from the same state, and between them it is the head's stored outputs (``mix``)
    applied to the fresh features. A coordinate that joined at another step keeps its own rhythm."""
    form = dict(preprocessing="scale_free", output="momentum_mix", level_feature=True, log_step_feature=True)
    plain = make_network(seed=2, **form)
    sparse = CoordinatewiseLSTM(NetworkConfig(**{**SMALL, **form, "lstm_every": 3}))
    sparse.load_state_dict(plain.state_dict())
    assert state_names(sparse.config)[-1] == "mix" and "mix" not in state_names(plain.config)
    torch.manual_seed(0)
    state = sparse.init_state(torch.zeros(6))
    assert state["mix"].shape == (6, sparse.config.num_outputs)
    state["t"][0] = 1.0  # this coordinate is one step ahead: its LSTM runs on steps 3, 6, ... of the loop
    lstm = [k for k in state if k[0] in "hc"]
    with torch.no_grad():
        for t in range(1, 8):
            grad = torch.randn(6)
            before = state
            update, state = sparse.step(grad, before)
            due = torch.tensor([t % 3 == 0] + [t % 3 == 1] * 5)
            reference, ref_state = plain.step(grad, {k: v for k, v in before.items() if k != "mix"})
            x, _ = sparse.features(grad, before)
            between = sparse._output(before["mix"], x, state)
            torch.testing.assert_close(update, torch.where(due, reference, between))
            assert bool((update[1:] != 0).all())  # the stored outputs are the head's, not the zeros they start as
            head = plain.head(torch.cat([ref_state[lstm[-2]], x], 1))
            torch.testing.assert_close(state["mix"], torch.where(due[:, None], head, before["mix"]))
            for k in lstm:
                torch.testing.assert_close(state[k], torch.where(due[:, None], ref_state[k], before[k]))
            for k in ref_state:
                if k not in lstm:  # the features' accumulators advance on every step
                    torch.testing.assert_close(state[k], ref_state[k])


def test_lstm_every_returns_the_state_it_did_not_change() -> None:
    """On a step where no coordinate's LSTM runs, the rule hands back the LSTM's state tensors themselves, so that
    the optimizer can skip copying them (most of a cheap step's memory traffic)."""
    network = make_network(preprocessing="scale_free", output="momentum_mix", lstm_every=2)
    grad = torch.randn(4)
    with torch.no_grad():
        _, state = network.step(grad, network.init_state(grad))
        _, after = network.step(grad, state)
    assert all(after[k] is state[k] for k in state if k[0] in "hc" or k == "mix")
    assert after["m0"] is not state["m0"]
