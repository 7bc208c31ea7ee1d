"""``python -m torch_lstm_optim.compare``: weights against weights on the same fresh problems, paired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_network

from torch_lstm_optim.evaluation.compare import ADAM_GRID, VS_ADAM_FLOOR, compare, main, scores, table, tuned_adam
from torch_lstm_optim.evaluation.evaluate import run_optimizer
from torch_lstm_optim.meta.train import validation_scores
from torch_lstm_optim.meta.tasks import make_task
from torch_lstm_optim.meta.unroll import Unroll, advance
from torch_lstm_optim.weights import bundled_root


def test_scores_are_the_meta_trainers_validation_scores_and_differences_are_paired() -> None:
    task = make_task("quadratic", dim=4)
    problems = [task.sample(seed, "test") for seed in range(6)]
    a, b = make_network(seed=0), make_network(seed=1)
    run = Unroll.start(problems)
    initial = run.final_losses()
    with torch.no_grad():
        advance(a, run, 5)
    expected = validation_scores(run.final_losses(), initial, "log_ratio")
    torch.testing.assert_close(scores(a, problems, 5, "log_ratio"), expected)

    result = compare({"a": a, "b": b, "a again": a}, problems, steps=5)
    first, second, same = (result["weights"][k] for k in ("a", "b", "a again"))
    assert first["diff_mean"] == 0 and first["better_on"] == first["worse_on"] == 0
    assert same == first  # the same weights score the same on the same problems
    diffs = torch.tensor(second["scores"]) - torch.tensor(first["scores"])
    assert second["diff_mean"] == pytest.approx(float(diffs.mean()))
    assert second["diff_se"] == pytest.approx(float(diffs.std() / 6 ** 0.5))
    assert second["diff_median"] == pytest.approx(float(diffs.median()))
    assert second["better_on"] == int((diffs < 0).sum()) and second["better_on"] + second["worse_on"] == 6


def test_vs_adam_scores_each_problem_against_adam_tuned_for_it() -> None:
    problems = [make_task("quadratic", dim=4).sample(seed, "test") for seed in range(3)]
    reference = tuned_adam(problems, 5)
    for problem, best in zip(problems, reference):
        finals = [run_optimizer(problem, lambda p: torch.optim.Adam(p, lr=lr), 5).final for lr in ADAM_GRID]
        assert float(best) == min(finals) and float(best) < finals[0]  # tuned: better than the grid's first rate
    network = make_network(seed=0)
    run = Unroll.start(problems)
    initial = run.final_losses()
    with torch.no_grad():
        advance(network, run, 5)
    expected = run.final_losses().double().log() - reference.log()
    torch.testing.assert_close(scores(network, problems, 5, "vs_adam", reference), expected)
    result = compare({"a": network, "b": make_network(seed=1)}, problems, steps=5, metric="vs_adam")
    assert result["adam_finals"] == reference.tolist()
    for r in result["weights"].values():
        assert r["beats_adam_on"] == sum(v < 0 for v in r["scores"])
        assert r["median"] == pytest.approx(float(torch.tensor(r["scores"]).median()))
    assert "| beats tuned Adam on |" in table(result)
    solved = scores(network, problems, 5, "vs_adam", torch.zeros(3, dtype=torch.float64))  # Adam at exactly 0:
    floored = torch.full((3,), VS_ADAM_FLOOR, dtype=torch.float64) * initial.double()  # both sides floored
    torch.testing.assert_close(solved, run.final_losses().double().maximum(floored).log() - floored.log())


def test_cli_writes_results_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_network(seed=1).save_pretrained(tmp_path / "other")
    main(["--task", "quadratic", "--task-arg", "dim=3", "--weights", "quadratic", "--weights", str(tmp_path / "other"),
          "--steps", "4", "--runs", "3", "--threads", "1", "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(result["weights"]) == ["quadratic", str(tmp_path / "other")] and result["runs"] == 3
    assert "| `quadratic` |" in capsys.readouterr().out
    main(["--task", "quadratic", "--task-arg", "dim=3", "--weights", "quadratic", "--weights", str(tmp_path / "other"),
          "--steps", "4", "--runs", "2", "--first-seed", "1", "--threads", "1", "--out", str(tmp_path / "later")])
    later = json.loads((tmp_path / "later" / "results.json").read_text())
    assert later["weights"]["quadratic"]["scores"] == result["weights"]["quadratic"]["scores"][1:]
    assert later["first_seed"] == 1
    for argv, code, message in (
            (["--weights", "quadratic"], 2, "give two or more different weights"),
            (["--weights", "quadratic", "--weights", str(tmp_path / "missing")], 2, "error: unknown weights"),
            (["--weights", "quadratic", "--weights", "mnist-mlp", "--first-seed", "-1"], 2, "--first-seed in [0, "),
            (["--weights", "quadratic", "--weights", "mnist-mlp", "--first-seed", str(2**70)], 2, "--first-seed in [0"),
            (["--weights", "quadratic", "--weights", "mnist-mlp", "--threads", "0"], 2, "--threads must be >= 1"),
            (["--weights", "quadratic", "--weights", str(Path(bundled_root()) / "quadratic")], 2,
             "holds the same weights as one named before it"),
            (["--weights", "quadratic", "--weights", "mnist-mlp", "--task-arg", "name=x"], 2,
             "--task-arg name: not a task option")):
        with pytest.raises(SystemExit) as stop:
            main(["--task", "quadratic", *argv, "--out", str(tmp_path / "bad")])
        assert stop.value.code == code and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
