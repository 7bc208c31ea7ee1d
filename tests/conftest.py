"""Shared fixtures: small networks with random (seeded) weights, since no trained weights exist in the tests; and
the ``torchrun`` launch of the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from torch_lstm_optim import CoordinatewiseLSTM, NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
# What a process prints when it aborts in gloo's teardown after finishing its work (SIGABRT): seen in about one
# full test run in five under load here, never when a launch is repeated alone (30 launches), and not prevented by
# a barrier before destroy_process_group; pytorch/pytorch#190489 reports the same message at a gloo process's exit.
TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(args: list[str], timeout: int, prepare: Callable[[], None] = lambda: None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` from the repository root (one thread per process, a free
    port), after ``prepare()`` (which sets up what the launch reads and writes). Launched once more, prepared again,
    only if a process aborted with :data:`TEARDOWN_ABORT`; any other failure, or that abort twice, fails the test
    with the launch's output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    for _ in range(2):
        prepare()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        if result.returncode == 0 or TEARDOWN_ABORT not in result.stderr:
            break
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def documented_shape(coordinates: tuple[int, ...], config: NetworkConfig, name: str) -> tuple[int, ...]:
    """A state tensor's shape for these leading dims: the LSTM's ``h``/``c`` have ``H`` values per coordinate, the
    head's stored outputs ``mix`` one per output, the feature accumulators one."""
    if name == "mix":
        return (*coordinates, config.num_outputs)
    return (*coordinates, config.hidden_size) if name[0] in "hc" else coordinates


# Big enough to exercise every code path, small enough that a step costs microseconds.
SMALL = dict(hidden_size=8, num_layers=2)


def make_network(seed: int = 0, **config: object) -> CoordinatewiseLSTM:
    """A network with seeded random weights; ``config`` overrides fields of the small default config."""
    torch.manual_seed(seed)
    return CoordinatewiseLSTM(NetworkConfig(**{**SMALL, **config}))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    """Every test starts from the same RNG state and one thread, so results are reproducible bit for bit."""
    torch.manual_seed(1234)
    torch.set_num_threads(1)


@pytest.fixture
def network() -> CoordinatewiseLSTM:
    """The paper's ``log_sign`` network (smaller hidden size), random weights."""
    return make_network()


# The rule's forms with their kinds of state: the paper's, scale-free features, the momentum mix with the level, and
# the same with the LSTM run every other step (its head's last outputs kept as state).
FORMS = {"log_sign": dict(preprocessing="log_sign"), "scale_free": dict(preprocessing="scale_free"),
         "momentum_mix": dict(preprocessing="scale_free", output="momentum_mix", level_feature=True,
                              log_step_feature=True),
         "lstm_every": dict(preprocessing="scale_free", output="momentum_mix", level_feature=True, lstm_every=2)}


@pytest.fixture(params=sorted(FORMS))
def any_network(request: pytest.FixtureRequest) -> CoordinatewiseLSTM:
    """One network per form of the rule, so optimizer behaviour is checked with each kind of state."""
    return make_network(**FORMS[request.param])


@pytest.fixture
def weights_folder(tmp_path: Path, network: CoordinatewiseLSTM) -> Path:
    """A valid weights folder (``config.json`` + ``model.safetensors``) written by ``save_pretrained``."""
    folder = tmp_path / "weights"
    network.save_pretrained(folder)
    return folder
