"""Property tests (hypothesis): whatever the parameters (0-d, empty, large-ish; float32, float64, bfloat16), groups
and gradient magnitudes, the optimizer's state stays consistent and finite, and its ``state_dict`` round-trips
through ``torch.save``/``torch.load(weights_only=True)`` to a bit-identical continuation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from conftest import documented_shape, make_network
from test_optimizer import roundtrip
from torch_lstm_optim import LSTMOptimizer
from torch_lstm_optim.network import state_dtype, state_names

NETWORKS = {
    "log_sign": make_network(),
    "scale_free": make_network(preprocessing="scale_free", log_rms_feature=True, output="direction_magnitude"),
    "lstm_every": make_network(preprocessing="scale_free", output="momentum_mix", level_feature=True, lstm_every=3),
}
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its shape and dtype, and its gradients' scale ``10**exponent`` (``None``: always zero, and
    ``"none"``: it never gets a gradient)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    exponent: int | None | str


@dataclass(frozen=True)
class Setup:
    network: str
    groups: list[tuple[list[ParamSpec], dict[str, object]]]
    chunk_size: int
    state_dtype: torch.dtype
    seed: int


shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple),  # includes empty ones, e.g. (3, 0)
    st.sampled_from([(700,), (25, 40)]),  # spans several chunks
)
# 10**-45 underflows float32 to subnormals or zero; 10**30 times a normal sample stays below float32's maximum.
exponents = st.one_of(st.integers(-45, 30), st.none(), st.just("none"))
param_specs = st.builds(ParamSpec, shapes, st.sampled_from(DTYPES), exponents)
group_options = st.fixed_dictionaries({"lr": st.sampled_from([0.0, 0.1, 1.0]),
                                       "weight_decay": st.sampled_from([0.0, 0.01]), "maximize": st.booleans()})
setups = st.builds(Setup, st.sampled_from(list(NETWORKS)),
                   st.lists(st.tuples(st.lists(param_specs, min_size=1, max_size=3), group_options),
                            min_size=1, max_size=3),
                   st.sampled_from([5, 97, 65536]), st.sampled_from([torch.float32, torch.bfloat16]),
                   st.integers(0, 2**16))


def build(setup: Setup) -> tuple[list[nn.Parameter], LSTMOptimizer]:
    """Fresh parameters (the same values every call) and an optimizer over them in the setup's groups."""
    generator = torch.Generator().manual_seed(setup.seed)
    params, groups = [], []
    for specs, options in setup.groups:
        group = [nn.Parameter(torch.randn(s.shape, generator=generator, dtype=torch.float64).to(s.dtype))
                 for s in specs]
        params += group
        groups.append({"params": group, **options})
    return params, LSTMOptimizer(groups, NETWORKS[setup.network], chunk_size=setup.chunk_size,
                                 state_dtype=setup.state_dtype)


def specs_of(setup: Setup) -> list[ParamSpec]:
    return [s for specs, _ in setup.groups for s in specs]


def set_grads(setup: Setup, params: list[nn.Parameter], step: int) -> None:
    """Gradients that depend only on the setup and ``step``, at each parameter's scale."""
    generator = torch.Generator().manual_seed(setup.seed * 100 + step)
    for p, spec in zip(params, specs_of(setup), strict=True):
        if spec.exponent == "none":
            p.grad = None
        else:
            scale = 0.0 if spec.exponent is None else 10.0 ** spec.exponent
            p.grad = (torch.randn(p.shape, generator=generator, dtype=torch.float64) * scale).to(p.dtype)


def check_consistent(setup: Setup, params: list[nn.Parameter], optimizer: LSTMOptimizer, steps: int) -> None:
    """Each parameter kept its shape and dtype and is finite; each with gradients has a complete, finite state."""
    names = set(state_names(NETWORKS[setup.network].config))
    for p, spec in zip(params, specs_of(setup), strict=True):
        assert p.shape == spec.shape and p.dtype == spec.dtype and torch.isfinite(p).all()
        if spec.exponent == "none":
            assert p not in optimizer.state
            continue
        state = optimizer.state[p]
        assert set(state) == names | {"step"} and state["step"] == steps
        for name in names:
            shape = documented_shape((p.numel(),), NETWORKS[setup.network].config, name)
            assert state[name].shape == shape, name
            assert state[name].dtype == state_dtype(name, setup.state_dtype), name
            assert torch.isfinite(state[name]).all(), name
    assert optimizer.nonfinite_count == 0


@PROPERTY_SETTINGS
@given(setup=setups, steps=st.integers(1, 3))
def test_state_stays_consistent_and_finite(setup: Setup, steps: int) -> None:
    params, optimizer = build(setup)
    for step in range(steps):
        set_grads(setup, params, step)
        optimizer.step()
        check_consistent(setup, params, optimizer, step + 1)


def state_tensors(optimizer: LSTMOptimizer, params: list[nn.Parameter]) -> list[dict[str, object]]:
    return [dict(optimizer.state[p]) for p in params if p in optimizer.state]


@PROPERTY_SETTINGS
@given(setup=setups, before=st.integers(1, 3))
def test_state_dict_round_trips_to_a_bit_identical_continuation(setup: Setup, before: int) -> None:
    params, optimizer = build(setup)
    for step in range(before):
        set_grads(setup, params, step)
        optimizer.step()
    saved_params = [p.detach().clone() for p in params]
    saved = roundtrip(optimizer.state_dict())

    resumed, resumed_optimizer = build(setup)
    with torch.no_grad():
        for p, value in zip(resumed, saved_params):
            p.copy_(value)
    resumed_optimizer.load_state_dict(saved)
    for step in range(before, before + 2):
        for ps, opt in ((params, optimizer), (resumed, resumed_optimizer)):
            set_grads(setup, ps, step)
            opt.step()
    for p, q in zip(params, resumed, strict=True):
        assert p.dtype == q.dtype and torch.equal(p, q)
    for ours, theirs in zip(state_tensors(optimizer, params), state_tensors(resumed_optimizer, resumed), strict=True):
        assert ours.keys() == theirs.keys()
        for name, value in ours.items():
            other = theirs[name]
            assert (value.dtype == other.dtype and torch.equal(value, other)) if isinstance(value, Tensor) \
                else value == other, name
