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
    network = load_network(name)
    card = (bundled_root() / name / "README.md").read_text()
    assert "python -m torch_lstm_optim.meta_train" in card and "## Evaluation" in card
    torch.manual_seed(0)
    w, y = torch.randn(10, 10), torch.randn(10)
    theta = torch.zeros(10, requires_grad=True)
    optimizer = LSTMOptimizer([theta], weights=network)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = (w @ theta - y).square().sum()
        first = first if first is not None else float(loss)
        loss.backward()
        optimizer.step()
    assert float((w @ theta - y).square().sum()) < first
