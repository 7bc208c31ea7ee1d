"""Shared fixtures: small networks with random (seeded) weights, since no trained weights exist in the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torch_lstm_optim import CoordinatewiseLSTM, NetworkConfig

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


# The rule's forms with their kinds of state: the paper's, scale-free features, and the momentum mix with the level.
FORMS = {"log_sign": dict(preprocessing="log_sign"), "scale_free": dict(preprocessing="scale_free"),
         "momentum_mix": dict(preprocessing="scale_free", output="momentum_mix", level_feature=True,
                              log_step_feature=True)}


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
