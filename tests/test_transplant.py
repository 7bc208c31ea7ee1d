"""``--init-rule transplant``: a momentum_mix network started from trained direction_magnitude weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import make_network
from torch_lstm_optim.meta.train import parse_args
from torch_lstm_optim.meta.transplant import momentum_mix_from

SOURCE = dict(preprocessing="scale_free", log_step_feature=True, output="direction_magnitude")


def test_the_transplant_keeps_the_lstm_and_the_direction_linear_in_the_momenta() -> None:
    source = make_network(seed=2, **SOURCE)
    torch.nn.init.normal_(source.head.weight, std=0.3)
    target = momentum_mix_from(source, replace(source.config, output="momentum_mix", level_feature=True))
    h, k = source.config.hidden_size, source.config.num_directions
    with torch.no_grad():  # what momentum_mix cannot express: the direction's h part, bias and non-direction weights
        source.head.weight[0, :h] = 0
        source.head.weight[0, h + k:] = 0
        source.head.bias[0] = 0
        target.head.bias[-1] = -40.0  # kappa = 0: no level factor
    grads = torch.randn(6, 25) * torch.logspace(-3, 2, 25)
    ours, theirs = target.init_state(grads[0]), source.init_state(grads[0])
    for grad in grads:
        with torch.no_grad():
            update, ours = target.step(grad, ours)
            expected, theirs = source.step(grad, theirs)
        torch.testing.assert_close(ours["h1"], theirs["h1"])  # the level enters through zero weights
        torch.testing.assert_close(update, expected)


def test_the_transplant_refuses_forms_and_shapes_it_cannot_map() -> None:
    source = make_network(**SOURCE)
    with pytest.raises(ValueError, match="'direction_magnitude' to 'momentum_mix'"):
        momentum_mix_from(make_network(), replace(source.config, output="momentum_mix"))
    with pytest.raises(ValueError, match="hidden_size"):
        momentum_mix_from(source, replace(source.config, output="momentum_mix", hidden_size=4))
    with pytest.raises(ValueError, match="features"):
        momentum_mix_from(source, replace(source.config, output="momentum_mix", log_step_feature=False))


def test_transplant_needs_init_weights(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--init-rule", "transplant", "--output", "momentum_mix", "--preprocessing", "scale_free"])
    assert "--init-rule transplant needs --init-weights" in capsys.readouterr().err
