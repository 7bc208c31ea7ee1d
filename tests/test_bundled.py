"""Every weight folder shipped in pretrained/ loads with the current code, has a model card, and optimizes."""

from __future__ import annotations

import pytest
import torch

from torch_lstm_optim import LSTMOptimizer, bundled_names, load_network
from torch_lstm_optim.weights import DEFAULT_WEIGHTS, bundled_root


def test_the_default_weights_are_bundled() -> None:
    assert DEFAULT_WEIGHTS in bundled_names()


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_weights_load_and_reduce_a_quadratic(name: str) -> None:
    """A gentle quadratic (curvature 0.1 to 0.6, where NAG at lr 1 is stable): every bundled rule must descend, to
    half its loss within 60 steps: twice the longest warm-up (30 steps), since a rule whose LSTM runs every 16th step
    is still at 0.70 of it after 30 (0.013 after 60)."""
    network = load_network(name)
    card = (bundled_root() / name / "README.md").read_text()
    assert "python -m torch_lstm_optim.meta_train" in card and "## Evaluation" in card
    torch.manual_seed(0)
    curvature, target = torch.linspace(0.05, 0.3, 10), torch.randn(10)
    theta = torch.zeros(10, requires_grad=True)
    optimizer = LSTMOptimizer([theta], weights=network)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = (curvature * (theta - target).square()).sum()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
