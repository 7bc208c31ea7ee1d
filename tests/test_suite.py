"""The generalization suite (issue 11, part 4): ``evaluate --suite generalization --quick`` end to end, its held-out
problems, its untuned peers when their packages are missing, and its errors."""

from __future__ import annotations

import json
import shutil
import math
import sys

import pytest
import torch

from torch_lstm_optim.evaluate import main as evaluate_main
from torch_lstm_optim.evaluation.evaluate import Run, run_optimizer
from torch_lstm_optim.evaluation.suite import QUICK, TUNED, untuned_baselines
from torch_lstm_optim.meta.tasks import Problem, TaskError, make_task
from torch_lstm_optim.meta.tasks.base import _check_problem
from torch_lstm_optim.weights import fingerprint, load_network, resolve


def test_quick_suite_end_to_end(tmp_path, capsys):
    """The quick run writes results.json (every pair, every optimizer, ratios, the bar), the PNG and the table; the
    same command again resumes from results.json instead of running again."""
    pytest.importorskip("sklearn")
    argv = ["--suite", "generalization", "--quick", "--weights", "quadratic", "--out", str(tmp_path)]
    evaluate_main(argv)
    result = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "generalization.png").stat().st_size > 0
    assert "| bar (issue 11) | met |" in (tmp_path / "table.md").read_text()
    untuned, _, skipped = untuned_baselines()
    assert result["skipped"] == skipped and result["tuned"] == list(TUNED)
    assert [(p["problem"], p["steps"]) for p in result["pairs"]] == [
        (name, steps) for name in QUICK["problems"] for steps in QUICK["horizons"]]
    for pair in result["pairs"]:
        assert set(pair["optimizers"]) == {"learned", *TUNED, *untuned}
        assert all(len(r["finals"]) == QUICK["seeds"] for r in pair["optimizers"].values())
        assert pair["optimizers"]["learned"]["lr"] == 1.0 and pair["optimizers"]["adam(1e-3)"]["lr"] == 1e-3
        assert all(pair["optimizers"][k]["lr"] in QUICK["grid"] for k in TUNED)
        assert pair["best_tuned"] in TUNED and pair["best_untuned"] in untuned
        learned = pair["optimizers"]["learned"]["final_mean"]
        assert pair["ratio_tuned"] == pytest.approx(learned / pair["optimizers"][pair["best_tuned"]]["final_mean"])
        assert math.isfinite(pair["ratio_untuned"]) and pair["seconds_learned"] > 0 and pair["seconds_adam"] > 0
        assert pair["why"] and pair["family"]
    summary = result["summary"]
    assert summary["pairs"] == 6 and 0 <= summary["fraction_won"] <= 1
    assert summary["worst_ratio"] == max(p["ratio_tuned"] for p in result["pairs"])
    assert len(summary["bar"]) == 5 and summary["passed"] == all(summary["bar"].values())
    # each tuned baseline scored as the learned one is, against the best of the other four: it wins a pair only
    # where it is the best tuned one (ties aside), and the ratio of the best tuned one is at most 1
    against_rest = summary["tuned_against_the_rest"]
    assert set(against_rest) == set(TUNED)
    for name, scores in against_rest.items():
        assert scores["won"] <= sum(p["best_tuned"] == name for p in result["pairs"])
        assert scores["median_ratio"] <= scores["worst_ratio"]
    assert sum(scores["won"] for scores in against_rest.values()) <= summary["pairs"]
    out = capsys.readouterr().out
    assert "| beale-2d | 20 |" in out and "| tuned baseline | wins | median ratio | worst ratio |" in out

    evaluate_main(argv)
    assert "resuming: 6 pairs" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["pairs"] == result["pairs"]
    assert result["weights_sha256"] == fingerprint(load_network("quadratic"))

    # Other weights on the same pairs: the baselines are taken from the first run, only the learned optimizer runs.
    other, weights = tmp_path / "other", tmp_path / "weights"
    shutil.copytree(resolve("mnist-mlp")[0], weights)
    evaluate_main([*argv[:3], "--weights", str(weights), "--baselines-from", str(tmp_path / "results.json"),
                   "--update-card", "--out", str(other)])
    card = (weights / "README.md").read_text()
    assert "## Generalization suite" in card and "| beale-2d | 20 |" in card and "## Evaluation" in card
    reused = json.loads((other / "results.json").read_text())
    for old, new in zip(result["pairs"], reused["pairs"]):
        assert {k: v for k, v in new["optimizers"].items() if k != "learned"} == \
            {k: v for k, v in old["optimizers"].items() if k != "learned"}
        assert new["optimizers"]["learned"]["finals"] != old["optimizers"]["learned"]["finals"]
        assert len(new["optimizers"]["learned"]["curve_mean"]) == len(old["optimizers"]["learned"]["curve_mean"])
    with pytest.raises(SystemExit):
        evaluate_main([*argv[:3], "--seeds", "3", "--baselines-from", str(tmp_path / "results.json"),
                       "--out", str(tmp_path / "bad")])
    assert "made with other settings (seeds)" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--suite", "nope"], "error: unknown suite 'nope': use one of ['generalization']"),
    (["--suite", "generalization", "--problems", "mnist-mlp"], "error: unknown problems ['mnist-mlp']"),
    (["--suite", "generalization", "--horizons", "100", "1000", "--tune-seeds", "3"],
     "error: --tune-seeds needs one count per horizon [100, 1000], found [3]"),
    (["--suite", "generalization", "--weights", "no-such-weights"], "error: "),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([*args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "results.json").exists()


def test_heldout_problems():
    """At least 12 problems of at least 4 families; each builds on val and test, the same when sampled again, with
    val and test apart; none can be meta-trained on; losses are >= 0 and the test functions' minima exactly 0."""
    pytest.importorskip("sklearn")
    from torch_lstm_optim.evaluation.heldout import FAMILIES, SUITE, Beale, Rastrigin, Rosenbrock, why

    assert len(SUITE) >= 12 and len(FAMILIES) >= 4 and all(why(name) for name in SUITE)
    for name, factory in SUITE.items():
        task = factory()
        val, test = (_check_problem(task, split, name) for split in ("val", "test"))
        again = task.sample(0, "test")
        assert all(torch.equal(again.params[k], v) for k, v in test.params.items()), name
        assert float(test.final_loss(test.params)) != float(val.final_loss(val.params)), name
        assert float(test.loss(test.params, 3)) >= 0, name
        with pytest.raises(TaskError, match="held-out evaluation problem"):
            task.sample(0, "train")
    for task, minimum in ((Rosenbrock(), torch.ones(10)), (Beale(), torch.tensor([3.0, 0.5])),
                          (Rastrigin(), torch.zeros(5))):
        assert float(task.sample(0, "test").loss({"theta": minimum}, 0)) == 0.0


def test_untuned_peers_skipped_when_missing(monkeypatch):
    """Without prodigyopt and schedulefree the suite still runs, with Adam(1e-3) alone, and says why."""
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import fails
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    factories, lrs, skipped = untuned_baselines()
    assert list(factories) == ["adam(1e-3)"] and lrs == {"adam(1e-3)": 1e-3}
    assert set(skipped) == {"prodigy", "schedule-free adamw"} and all("pip install" in v for v in skipped.values())


def test_final_loss_in_eval_mode():
    """An optimizer with an eval() mode (schedule-free) is switched to it before the final loss is taken."""

    class ModalSGD(torch.optim.SGD):
        def eval(self):
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.zero_()

    problem = Problem(params={"x": torch.ones(2)}, loss=lambda p, step: (p["x"] - 3).square().sum())
    run = run_optimizer(problem, lambda params: ModalSGD(params, lr=0.1), 5)
    assert isinstance(run, Run) and run.final == 18.0 and run.curve[-1] < 18.0


def test_windowed_tuning_picks_what_the_whole_grid_picks():
    """Tuning from a shorter horizon's learning rate, widened while the best is at an edge, lands on the whole
    grid's choice (SGD on x^2: unimodal in the learning rate), trying fewer learning rates when it starts near it."""
    from torch_lstm_optim.evaluation.evaluate import BASELINES, LR_GRID
    from torch_lstm_optim.evaluation.suite import tune

    class Parabola:
        name = "parabola"

        def sample(self, seed, split="test"):
            return Problem(params={"x": torch.tensor([1.0 + seed])}, loss=lambda p, step: p["x"].square().sum())

    best, scores = tune(Parabola(), BASELINES["sgd"], 5, 2, LR_GRID)
    assert len(scores) == len(LR_GRID) and best == pytest.approx(10 ** -0.5)
    for centre, tried in ((0.1, 5), (1e-4, 9), (10.0, 5)):
        lr, scores = tune(Parabola(), BASELINES["sgd"], 5, 2, LR_GRID, centre=centre, window=2)
        assert lr == best and len(scores) == tried, centre


def test_a_heldout_problem_evaluates_on_its_own(tmp_path):
    """``evaluate --task torch_lstm_optim.evaluation.heldout:Beale`` works: it samples only val and test, the splits a
    held-out problem allows, and still refuses to meta-train on one."""
    evaluate_main(["--task", "torch_lstm_optim.evaluation.heldout:Beale", "--weights", "generalist", "--steps", "5",
                   "--runs", "2", "--tune-runs", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["task"] == "beale-2d" and math.isfinite(result["optimizers"]["learned"]["final_mean"])
    with pytest.raises(TaskError, match="held-out evaluation problem"):
        make_task("torch_lstm_optim.evaluation.heldout:Beale")


def test_a_folder_that_now_holds_other_weights_is_not_resumed(tmp_path, capsys):
    """results.json of a folder's old weights must not stand for what the folder holds now."""
    pytest.importorskip("sklearn")
    weights, out = tmp_path / "weights", tmp_path / "out"
    shutil.copytree(resolve("quadratic")[0], weights)
    argv = ["--suite", "generalization", "--quick", "--problems", "beale-2d", "--horizons", "5", "--tune-seeds", "1",
            "--weights", str(weights), "--out", str(out)]
    evaluate_main(argv)
    before = json.loads((out / "results.json").read_text())
    shutil.rmtree(weights)
    shutil.copytree(resolve("generalist")[0], weights)
    capsys.readouterr()
    evaluate_main(argv)
    assert "holds results of other weights" in capsys.readouterr().err
    after = json.loads((out / "results.json").read_text())
    assert after["weights_sha256"] == fingerprint(load_network(weights)) != before["weights_sha256"]
    assert after["pairs"][0]["optimizers"]["learned"]["finals"] != before["pairs"][0]["optimizers"]["learned"]["finals"]
