"""``python -m torch_lstm_optim.evaluation.trace``: per-tensor sizes and step sizes over a run of a suite problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_lstm_optim.evaluation.heldout import SUITE
from torch_lstm_optim.evaluation.trace import main, trace_run


def test_a_run_records_the_loss_the_sizes_and_each_steps_size_relative_to_its_tensor() -> None:
    problem = SUITE["rosenbrock-10d"]().sample(0, "test")
    lr = 1e-3
    record = trace_run(problem, lambda params: torch.optim.SGD(params, lr=lr), at=[1, 3])
    theta = problem.params["theta"].clone().requires_grad_()  # the problem's one tensor, stepped by hand
    expected_steps = []
    for t in range(3):
        (grad,) = torch.autograd.grad(problem.loss({"theta": theta}, t), [theta])
        expected_steps.append(lr * grad.norm().item() / theta.norm().item())  # rms ratio = norm ratio
        with torch.no_grad():
            theta.sub_(lr * grad)
    assert record["loss"][1] == pytest.approx(float(problem.final_loss({"theta": theta.detach()})), rel=1e-5)
    assert record["rms"]["theta"][1] == pytest.approx(theta.double().pow(2).mean().sqrt().item(), rel=1e-5)
    assert record["step"]["theta"] == pytest.approx([expected_steps[0], expected_steps[2]], rel=1e-4)


def test_cli_compares_learned_weights_with_a_baseline_and_refuses_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.json"
    main(["--problem", "attention-reverse", "--weights", "quadratic", "--weights", "adam:0.01", "--steps", "3",
          "--seeds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "## quadratic" in printed and "## adam:0.01" in printed and "norm.weight" in printed
    result = json.loads(out.read_text())
    assert result["at"] == [1, 3] and list(result["contenders"]) == ["quadratic", "adam:0.01"]
    assert result["initial_rms"]["norm.weight"] == pytest.approx(1.0)
    assert len(result["contenders"]["adam:0.01"]["step"]["embed.weight"]) == 2
    for argv, message in ((["--weights", "sgd:fast"], "the learning rate 'fast' is not a number"),
                          (["--weights", str(tmp_path / "missing")], "error: unknown weights"),
                          (["--weights", "quadratic", "--at", "5"], "--at within 1..--steps"),
                          (["--weights", "quadratic", "--problem", "nope"], "invalid choice")):
        with pytest.raises(SystemExit) as stop:
            main(["--problem", "rosenbrock-10d", "--steps", "3", *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
