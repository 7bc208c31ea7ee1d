"""Per-param-group networks: ``LSTMOptimizer([{"params": a, "weights": A}, {"params": b, "weights": B}])``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from conftest import make_network
from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, StateDictError, WeightsError


def make_params(shapes: list[tuple[int, ...]], seed: int) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


CONV_SHAPES = [(4, 3, 3, 3), (4,)]
OTHER_SHAPES = [(10, 5), (5,), ()]


def set_grads(params: list[Tensor], step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def roundtrip(state_dict: dict[str, object]) -> dict[str, object]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture
def conv_net() -> CoordinatewiseLSTM:
    return make_network(seed=1)


@pytest.fixture
def other_net() -> CoordinatewiseLSTM:
    return make_network(seed=2, preprocessing="scale_free", hidden_size=5)


def grouped(convs: list[Tensor], others: list[Tensor], a: CoordinatewiseLSTM, b: CoordinatewiseLSTM,
            **kwargs: object) -> LSTMOptimizer:
    return LSTMOptimizer([{"params": convs, "weights": a, "lr": 0.5}, {"params": others, "weights": b}], **kwargs)


@pytest.mark.parametrize("chunk_size", [3, None])
def test_two_groups_with_two_networks_step_exactly_like_two_optimizers(
        conv_net: CoordinatewiseLSTM, other_net: CoordinatewiseLSTM, chunk_size: int | None) -> None:
    convs, others = make_params(CONV_SHAPES, 0), make_params(OTHER_SHAPES, 1)
    optimizer = grouped(convs, others, conv_net, other_net, chunk_size=chunk_size, weight_decay=0.01)
    ref_convs, ref_others = make_params(CONV_SHAPES, 0), make_params(OTHER_SHAPES, 1)
    separate = [LSTMOptimizer(ref_convs, conv_net, lr=0.5, chunk_size=chunk_size, weight_decay=0.01),
                LSTMOptimizer(ref_others, other_net, chunk_size=chunk_size, weight_decay=0.01)]
    for step in range(4):
        set_grads(convs + others, step)
        set_grads(ref_convs + ref_others, step)
        optimizer.step()
        for single in separate:
            single.step()
    for a, b in zip(convs + others, ref_convs + ref_others, strict=True):
        assert torch.equal(a, b)
        assert optimizer.state[a].keys() == {**separate[0].state, **separate[1].state}[b].keys()
    assert optimizer.network_of(0) is conv_net and optimizer.network_of(1) is other_net


def test_groups_without_weights_use_the_constructors(conv_net: CoordinatewiseLSTM,
                                                     other_net: CoordinatewiseLSTM) -> None:
    convs, others = make_params(CONV_SHAPES, 0), make_params(OTHER_SHAPES, 1)
    optimizer = LSTMOptimizer([{"params": convs}, {"params": others, "weights": other_net}], weights=conv_net)
    assert optimizer.network is conv_net
    assert [optimizer.network_of(i) for i in range(2)] == [conv_net, other_net]
    assert "weights" not in optimizer.param_groups[1]  # a network is no state-dict value


def test_groups_sharing_a_network_are_batched_together_with_their_own_settings(
        conv_net: CoordinatewiseLSTM, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call of the rule for two groups of one network, each group keeping its lr, weight decay and sign."""
    first, second = make_params(CONV_SHAPES, 0), make_params(OTHER_SHAPES, 1)
    optimizer = LSTMOptimizer([{"params": first, "lr": 0.3, "weight_decay": 0.1},
                               {"params": second, "lr": 2.0, "maximize": True}], weights=conv_net)
    calls = []
    step = conv_net.step
    monkeypatch.setattr(conv_net, "step", lambda g, s, rms: calls.append(g.numel()) or step(g, s, rms))
    refs = [LSTMOptimizer(make_params(CONV_SHAPES, 0), conv_net, lr=0.3, weight_decay=0.1),
            LSTMOptimizer(make_params(OTHER_SHAPES, 1), conv_net, lr=2.0, maximize=True)]
    ref_params = [p for ref in refs for p in ref.param_groups[0]["params"]]
    set_grads(first + second, 0)
    set_grads(ref_params, 0)
    optimizer.step()
    assert calls == [sum(p.numel() for p in first + second)]
    for ref in refs:
        ref.step()
    for a, b in zip(first + second, ref_params, strict=True):
        torch.testing.assert_close(a, b)


def test_groups_naming_the_same_weights_share_one_network(tmp_path: Path, conv_net: CoordinatewiseLSTM) -> None:
    conv_net.save_pretrained(tmp_path / "w")
    optimizer = LSTMOptimizer([{"params": make_params(CONV_SHAPES, 0), "weights": str(tmp_path / "w")},
                               {"params": make_params(OTHER_SHAPES, 1), "weights": str(tmp_path / "w")}],
                              weights=make_network(seed=5))
    assert optimizer.network_of(0) is optimizer.network_of(1)
    assert optimizer.state_dict()["network"]["groups"][1]["source"]["folder"] == str(tmp_path / "w")


def test_state_dict_records_every_groups_network_and_round_trips(
        conv_net: CoordinatewiseLSTM, other_net: CoordinatewiseLSTM) -> None:
    convs, others = make_params(CONV_SHAPES, 0), make_params(OTHER_SHAPES, 1)
    optimizer = grouped(convs, others, conv_net, other_net)
    for step in range(2):
        set_grads(convs + others, step)
        optimizer.step()
    saved = roundtrip(optimizer.state_dict())
    assert [g["config"] for g in saved["network"]["groups"]] == [conv_net.config.to_dict(),
                                                                 other_net.config.to_dict()]
    assert saved["network"]["config"] == conv_net.config.to_dict()
    saved_params = [p.detach().clone() for p in convs + others]
    for step in range(2, 4):
        set_grads(convs + others, step)
        optimizer.step()

    resumed = [nn.Parameter(p.clone()) for p in saved_params]
    restored = grouped(resumed[:2], resumed[2:], conv_net, other_net)
    restored.load_state_dict(saved)
    for step in range(2, 4):
        set_grads(resumed, step)
        restored.step()
    for a, b in zip(resumed, convs + others, strict=True):
        assert torch.equal(a, b)


def test_a_mismatched_groups_network_is_named_and_nothing_changes(
        conv_net: CoordinatewiseLSTM, other_net: CoordinatewiseLSTM) -> None:
    convs, others = make_params(CONV_SHAPES, 0), make_params(OTHER_SHAPES, 1)
    optimizer = grouped(convs, others, conv_net, other_net)
    set_grads(convs + others, 0)
    optimizer.step()
    saved = roundtrip(optimizer.state_dict())
    before = {id(p): {k: v.clone() for k, v in s.items() if isinstance(v, Tensor)} for p, s in optimizer.state.items()}

    swapped = grouped(convs, others, conv_net, make_network(seed=2, preprocessing="scale_free", hidden_size=6))
    with pytest.raises(StateDictError, match=r"param group 1: state dict was made for another network.*hidden_size"):
        swapped.load_state_dict(saved)
    assert len(swapped.state) == 0

    with pytest.raises(StateDictError, match="records 1 param groups' networks, this optimizer has 2"):
        optimizer.load_state_dict({**saved, "network": {**saved["network"], "groups": saved["network"]["groups"][:1]}})
    for p, s in optimizer.state.items():
        assert all(torch.equal(v, s[k]) for k, v in before[id(p)].items())


def test_old_single_network_state_dicts_still_load(conv_net: CoordinatewiseLSTM,
                                                   other_net: CoordinatewiseLSTM) -> None:
    """A state dict without ``"groups"`` (before per-group networks) names one network for all groups."""
    params = make_params(OTHER_SHAPES, 1)
    optimizer = LSTMOptimizer([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], conv_net)
    set_grads(params, 0)
    optimizer.step()
    saved = roundtrip(optimizer.state_dict())
    del saved["network"]["groups"]
    restored = LSTMOptimizer([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], conv_net)
    restored.load_state_dict(saved)
    assert restored.state[params[0]]["step"] == 1

    mixed = LSTMOptimizer([{"params": params[:1]}, {"params": params[1:], "weights": other_net}], conv_net)
    with pytest.raises(StateDictError, match="param group 1: state dict was made for another network"):
        mixed.load_state_dict(saved)


def test_a_groups_bad_weights_name_the_group(conv_net: CoordinatewiseLSTM) -> None:
    with pytest.raises(WeightsError, match="param group 1: unknown weights 'no-such-weights'"):
        LSTMOptimizer([{"params": make_params(CONV_SHAPES, 0)},
                       {"params": make_params(OTHER_SHAPES, 1), "weights": "no-such-weights"}], conv_net)
    with pytest.raises(ValueError, match="param group 0 has a 'revision' but no 'weights'"):
        LSTMOptimizer([{"params": make_params(CONV_SHAPES, 0), "revision": "main"}], conv_net)
    with pytest.raises(ValueError, match="float16"):
        LSTMOptimizer([{"params": make_params(CONV_SHAPES, 0)},
                       {"params": make_params(OTHER_SHAPES, 1), "weights": make_network(preprocessing="scale_free")}],
                      conv_net, state_dtype=torch.float16)


def test_the_default_network_is_not_loaded_when_every_group_has_its_own(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conv_net: CoordinatewiseLSTM) -> None:
    monkeypatch.setattr("torch_lstm_optim.weights.bundled_root", lambda: tmp_path)  # no default weights here
    optimizer = LSTMOptimizer([{"params": make_params(CONV_SHAPES, 0), "weights": conv_net}])
    assert optimizer.network_of(0) is conv_net
    with pytest.raises(WeightsError, match="default weights"):
        optimizer.add_param_group({"params": make_params(OTHER_SHAPES, 1)})
    assert len(optimizer.param_groups) == 1
