"""LSTMOptimizer under torch's distributed engines: DDP and FSDP2 (``fully_shard``), 2 CPU processes (gloo).

One ``torchrun`` launch of ``distributed_worker.py`` trains ``examples/ddp.py``'s problem both ways, with a
``torch.distributed.checkpoint`` save and restore on the way; the tests compare what the processes ended with
against each other and against one process on the whole batch. A second launch runs the example itself. Most of
a launch's time is spent importing torch in three processes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from conftest import make_network, torchrun
from distributed_worker import SAVE_AT, SEED, STEPS, example
from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, StateDictError

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

# One process's parameters and optimizer state (by parameter name) after STEPS steps, and its losses.
SingleProcess = tuple[dict[str, Tensor], dict[str, dict[str, Any]], list[float]]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's output folder: ``rank0.pt``, ``rank1.pt``, the weights it used and its checkpoints."""
    out = tmp_path_factory.mktemp("distributed")
    # scale_free carries both kinds of state: (N, H) LSTM states and (N,) feature accumulators; the parameter's
    # scale must be the whole tensor's, not a shard's, for FSDP to step as one process does.
    make_network(preprocessing="scale_free", param_scale_feature=True).save_pretrained(out / "weights")
    torchrun(["tests/distributed_worker.py", str(out / "weights"), str(out)], timeout=300)
    return out


@pytest.fixture(scope="module")
def ranks(launched: Path) -> list[dict[str, Any]]:
    return [torch.load(launched / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture(scope="module")
def single_process(launched: Path) -> SingleProcess:
    """One process, the whole batch, the same model, weights and steps."""
    model, inputs, targets = example.make_problem(SEED)
    optimizer = LSTMOptimizer(model.parameters(), launched / "weights")
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return ({name: p.detach() for name, p in model.named_parameters()},
            {name: optimizer.state[p] for name, p in model.named_parameters()}, losses)


def assert_state_close(found: dict[str, Any], expected: dict[str, Any], exact: bool = False) -> None:
    """Same step count and state tensors; a sharded parameter's state (its shape + H) is compared flattened."""
    assert found.keys() == expected.keys()
    for k, v in expected.items():
        if isinstance(v, Tensor):
            found_v = found[k].reshape(v.shape)
            assert torch.equal(found_v, v) if exact else torch.allclose(found_v, v, rtol=1e-5, atol=1e-6), k
        else:
            assert found[k] == v, k


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_processes_agree_and_match_one_process_on_the_whole_batch(ranks: list[dict[str, Any]],
                                                                  single_process: SingleProcess, mode: str) -> None:
    params, state, _ = single_process
    for rank in ranks:
        assert rank[mode]["params"].keys() == params.keys()
        for name, p in params.items():
            # The update of every coordinate is computed once (FSDP2) or identically in each replica (DDP).
            assert torch.equal(rank[mode]["params"][name], ranks[0][mode]["params"][name]), name
            # Averaging the gradients across processes rounds differently from one process's mean.
            torch.testing.assert_close(rank[mode]["params"][name], p, rtol=1e-5, atol=1e-6, msg=name)
            assert_state_close(rank[mode]["state"][name], state[name])


def test_fsdp_shards_the_optimizer_state_with_the_parameters(ranks: list[dict[str, Any]],
                                                             single_process: SingleProcess) -> None:
    """Each process holds the state of its own shard only: the parameter's local shape, plus H for h and c."""
    params, state, _ = single_process
    hidden = state["0.weight"]["h0"].shape[1]
    for name, p in params.items():
        local_numels = []
        for rank in ranks:
            kind, local_shape, local_state = rank["fsdp"]["local"][name]
            assert kind == "DTensor"
            assert set(local_state) == {k for k, v in state[name].items() if isinstance(v, Tensor)}
            for k, (state_kind, shape) in local_state.items():
                assert state_kind == "DTensor"
                assert shape == (local_shape + (hidden,) if k[0] in "hc" else local_shape), (name, k)
            local_numels.append(torch.Size(local_shape).numel())
        assert sum(local_numels) == p.numel()
    # The shards are uneven (25 rows over 2 processes) and some are empty (a 1-row parameter).
    assert ranks[1]["fsdp"]["local"]["0.bias"][1] == (12,) and ranks[1]["fsdp"]["local"]["2.bias"][1] == (0,)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_run_restored_from_a_distributed_checkpoint_continues_identically(ranks: list[dict[str, Any]],
                                                                            mode: str) -> None:
    for rank in ranks:
        result = rank[mode]
        assert result["resumed_step"] == SAVE_AT
        for name, p in result["params"].items():
            assert torch.equal(result["resumed_params"][name], p), name
            assert_state_close(result["resumed_state"][name], result["state"][name], exact=True)


def test_example_resumes_from_a_checkpoint_and_saves_one(launched: Path, single_process: SingleProcess,
                                                         tmp_path: Path) -> None:
    """``examples/ddp.py --mode fsdp`` as a user runs it, from the worker's checkpoint of the same problem."""
    checkpoint = tmp_path / "checkpoint"

    def prepare() -> None:  # the run saves over the checkpoint it resumed from
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.copytree(launched / "checkpoint_fsdp", checkpoint)

    out = torchrun(["examples/ddp.py", "--mode", "fsdp", "--weights", str(launched / "weights"), "--steps", str(STEPS),
                    "--checkpoint", str(checkpoint)], timeout=300, prepare=prepare).stdout
    _, _, losses = single_process
    assert f"resumed from {checkpoint} at step {SAVE_AT}" in out
    assert f"step {STEPS - 1:4d}  loss {losses[-1]:.4f}" in out
    assert f"saved {checkpoint} at step {STEPS}" in out


def test_state_dict_without_network_record_loads_and_is_still_checked(any_network: CoordinatewiseLSTM) -> None:
    """torch.distributed.checkpoint's helpers pass on only "state" and "param_groups": that loads, and the state's
    names and shapes are still checked against the network."""
    params = [nn.Parameter(torch.randn(4, 3))]
    optimizer = LSTMOptimizer(params, any_network)
    params[0].grad = torch.randn(4, 3)
    optimizer.step()
    state_dict = {k: v for k, v in optimizer.state_dict().items() if k != "network"}
    restored = LSTMOptimizer([nn.Parameter(params[0].detach().clone())], any_network)
    restored.load_state_dict(state_dict)
    assert_state_close(next(iter(restored.state.values())), optimizer.state[params[0]], exact=True)
    with pytest.raises(StateDictError, match="shape"):
        other = make_network(hidden_size=5, preprocessing=any_network.config.preprocessing)
        LSTMOptimizer([nn.Parameter(torch.randn(4, 3))], other).load_state_dict(state_dict)
