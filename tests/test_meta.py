"""The unroll, the meta-trainer and the evaluation: one update rule, real meta-gradients, working CLIs."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_network

from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, NetworkConfig, load_network
from torch_lstm_optim.evaluate import main as evaluate_main
from torch_lstm_optim.evaluation.evaluate import evaluate, run_optimizer
from torch_lstm_optim.meta.train import main as meta_train_main
from torch_lstm_optim.meta.train import parse_args, start_networks, validate
from torch_lstm_optim.meta.tasks import Problem, TaskError, make_task
from torch_lstm_optim.meta.unroll import Unroll, advance, meta_loss
from torch_lstm_optim.weights import WeightsError

SCALE_FREE = dict(preprocessing="scale_free", log_rms_feature=True, output="direction_magnitude")


@pytest.mark.parametrize("config", [{}, SCALE_FREE], ids=["log_sign", "scale_free"])
def test_unroll_without_grad_equals_the_optimizer(config: dict) -> None:
    """The meta-trainer's unroll and LSTMOptimizer.step() run the same rule: same trajectory."""
    network = make_network(**config)
    problems = [make_task("quadratic", dim=6).sample(seed) for seed in (0, 1)]
    run = Unroll.start(problems)
    with torch.no_grad():
        losses = advance(network, run, 12)
    for index, problem in enumerate(problems):
        result = run_optimizer(problem, lambda p: LSTMOptimizer(p, weights=network), 12)
        torch.testing.assert_close(torch.tensor(result.curve[1:]), losses[:, index], rtol=1e-5, atol=1e-6)
        params = {k: v.detach().clone().requires_grad_() for k, v in problem.params.items()}
        optimizer = LSTMOptimizer(list(params.values()), weights=network)
        for t in range(12):
            optimizer.zero_grad()
            problem.loss(params, t).backward()
            optimizer.step()
        torch.testing.assert_close(params["theta"], run.params[index]["theta"].detach(), rtol=1e-5, atol=1e-6)


def test_unroll_without_grad_equals_the_optimizer_with_the_parameter_scale() -> None:
    """With ``param_scale_feature`` both callers feed each coordinate its own tensor's rms (a weight and a bias of
    different sizes here, both problems in one batch): same trajectory."""
    network = make_network(preprocessing="scale_free", output="momentum_mix", level_feature=True,
                           param_scale_feature=True)
    torch.nn.init.normal_(network.head.weight, std=0.3)  # so that the step reads the feature
    task = make_task("linear-model", inputs=5, classes=3)
    problems = [task.sample(seed) for seed in (0, 1)]
    run = Unroll.start(problems)
    with torch.no_grad():
        losses = advance(network, run, 8)
    for index, problem in enumerate(problems):
        result = run_optimizer(problem, lambda p: LSTMOptimizer(p, weights=network, chunk_size=7), 8)
        torch.testing.assert_close(torch.tensor(result.curve[1:]), losses[:, index], rtol=1e-5, atol=1e-6)


def test_meta_gradient_reaches_every_weight_without_second_derivatives() -> None:
    """The paper's network gets a meta-gradient in every weight; the optimizee's gradients carry no graph."""
    network = make_network()
    seen = []

    def rule(grad: torch.Tensor, state: dict, param_rms: torch.Tensor | None) -> tuple:
        seen.append(grad.requires_grad)
        return network.step(grad, state, param_rms)

    run = Unroll.start([make_task("quadratic", dim=5).sample(0)])
    losses = advance(network, run, 5, rule=rule)
    assert losses.shape == (5, 1) and losses.requires_grad
    assert seen == [False] * 5  # the optimizee's gradient enters the rule as a constant
    meta_loss(losses, "log").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    run.detach()
    assert not run.params[0]["theta"].requires_grad
    assert not any(v.requires_grad for state in run.state.values() for v in state.values())


def test_a_validation_loss_of_exactly_zero_scores_finitely() -> None:
    """Else the mean log ratio is -inf and that checkpoint stays the best for ever."""
    from torch_lstm_optim.meta.train import validation_scores

    finals, initial = torch.tensor([0.0, 0.5]), torch.tensor([2.0, 1.0])
    scores = validation_scores(finals, initial, "log_ratio")
    assert torch.isfinite(scores).all() and scores.tolist() == pytest.approx([math.log(1e-30), math.log(0.5)])
    assert torch.equal(validation_scores(finals, initial, "loss"), finals)
    floored = validation_scores(finals, initial, "log_ratio", floor=0.6)
    assert floored.tolist() == pytest.approx([math.log(0.6), math.log(0.6)])


def test_meta_objectives() -> None:
    losses = torch.tensor([[1.0, 100.0], [3.0, 100.0]])
    assert float(meta_loss(losses, "sum")) == pytest.approx((4 + 200) / 2)
    assert float(meta_loss(losses, "log")) == pytest.approx(float(losses.log().mean()))
    assert float(meta_loss(losses, "final")) == pytest.approx(float(losses[-1].log().mean()))
    long = torch.arange(1.0, 41.0).unsqueeze(1)
    assert float(meta_loss(long, "final")) == pytest.approx(float(long[-4:].log().mean()))
    with pytest.raises(ValueError, match="unknown meta-objective"):
        meta_loss(losses, "max")


def test_a_log_floor_stops_problems_below_it_from_counting() -> None:
    """--log-floor: a problem's losses below its floor count as the floor and send no meta-gradient; the others
    count as before."""
    losses = torch.tensor([[1e-8, 4.0], [1e-9, 2.0]], requires_grad=True)
    floor = torch.tensor([1e-4, 1e-4])
    for objective in ("log", "final"):
        value = meta_loss(losses, objective, floor)
        rows = losses[-1:] if objective == "final" else losses
        expected = torch.stack([torch.full((len(rows),), math.log(1e-4)), rows[:, 1].log()], 1).mean()
        assert float(value.detach()) == pytest.approx(float(expected.detach()))
        (grad,) = torch.autograd.grad(value, losses)
        assert (grad[:, 0] == 0).all() and (grad[-1, 1] != 0)
    assert torch.equal(meta_loss(losses, "sum", floor), meta_loss(losses, "sum"))


def test_meta_train_improves_and_writes_a_loadable_folder(tmp_path: Path) -> None:
    """A short paper-recipe run on quadratics must beat its own random initialisation on validation problems."""
    out = tmp_path / "run"
    meta_train_main(["--task", "quadratic", "--iterations", "12", "--meta-batch", "8", "--eval-every", "1",
                     "--val-problems", "16", "--threads", "1", "--no-compile", "--out", str(out),
                     "--hidden-size", "8"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(13)) and all("val" in r for r in log)
    assert min(r["val"] for r in log[1:]) < log[0]["val"]  # iteration 0 validates the untrained network
    network = load_network(out)
    assert network.config.hidden_size == 8
    card = (out / "README.md").read_text()
    assert "python -m torch_lstm_optim.meta_train --task quadratic" in card and "seed 0" in card
    model = torch.nn.Linear(3, 1)
    LSTMOptimizer(model.parameters(), weights=out)


def test_evaluate_reports_tuned_baselines(tmp_path: Path) -> None:
    task = make_task("quadratic", dim=4)
    result = evaluate(task, make_network(), steps=5, runs=3, tune_runs=2, baselines=("sgd", "adam"),
                      grid=(0.01, 0.1))
    assert set(result["optimizers"]) == {"learned", "sgd", "adam"}
    assert result["optimizers"]["adam"]["lr"] in (0.01, 0.1)
    assert len(result["optimizers"]["learned"]["curve_mean"]) == 6
    assert result["best_baseline"] in ("sgd", "adam")
    json.dumps(result)


def test_evaluate_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in ((["--task", "nope"], "unknown task 'nope'"),
                          (["--task", "quadratic", "--weights", str(tmp_path / "missing")], "unknown weights")):
        with pytest.raises(SystemExit) as stop:
            evaluate_main([*argv, "--out", str(tmp_path / "out")])
        assert stop.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_curriculum_moves_to_longer_horizons_when_validation_stalls(tmp_path: Path) -> None:
    """With --meta-lr 0 the network never changes, so validation never improves: after --patience validations the
    episodes move to the next horizon, and validation always runs at --horizon."""
    out = tmp_path / "run"
    meta_train_main(["--task", "quadratic", "--iterations", "5", "--meta-batch", "2", "--eval-every", "1",
                     "--patience", "2", "--curriculum", "2", "4", "--horizon", "6", "--truncation", "2",
                     "--meta-lr", "0", "--val-problems", "4", "--val-metric", "log_ratio", "--threads", "1",
                     "--no-compile", "--out", str(out), "--hidden-size", "4"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("horizon") for r in log] == [None, 2, 2, 4, 4, 6]
    assert len({r["val"] for r in log}) == 1
    assert "horizons [2, 4, 6]" in (out / "README.md").read_text()


def test_with_average_decay_the_moving_average_of_the_weights_is_validated_and_kept(tmp_path: Path) -> None:
    """One meta-iteration of two meta-updates, w1 then w2, with decay 0.75: the average is 0.75 w1 + 0.25 w2 (the
    first update starts it at w1); the logged validation is that average's, and its weights are the ones written
    whenever they validate best. w1 comes from a run that stops after the first truncation of the same problems."""
    common = ["--task", "quadratic", "--iterations", "1", "--meta-batch", "2", "--eval-every", "1",
              "--truncation", "2", "--val-problems", "4", "--threads", "1", "--no-compile", "--hidden-size", "4"]
    meta_train_main([*common, "--horizon", "2", "--out", str(tmp_path / "w1")])
    meta_train_main([*common, "--horizon", "4", "--average-decay", "0.75", "--out", str(tmp_path / "avg")])
    w1 = torch.load(tmp_path / "w1" / "checkpoint.pt", weights_only=True)["network"]
    checkpoint = torch.load(tmp_path / "avg" / "checkpoint.pt", weights_only=True)
    w2, averaged = checkpoint["network"], checkpoint["averaged"]
    assert int(averaged["n_averaged"]) == 2
    for name in w2:
        assert not torch.equal(w1[name], w2[name]), name
        torch.testing.assert_close(averaged["module." + name], 0.75 * w1[name] + 0.25 * w2[name])
    network = CoordinatewiseLSTM(NetworkConfig.from_dict(checkpoint["network_config"]))
    network.load_state_dict({name: averaged["module." + name] for name in w2})
    config, _ = parse_args([*common, "--horizon", "4"])
    log = [json.loads(line) for line in (tmp_path / "avg" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["val"] == pytest.approx(validate(network, make_task("quadratic"), config))
    assert checkpoint["progress"]["best_iteration"] == 1  # the average beat the start, so it is what was kept
    kept = load_network(tmp_path / "avg").state_dict()
    assert all(torch.equal(kept[name], value) for name, value in network.state_dict().items())


def test_keep_checks_writes_the_weights_of_every_validation(tmp_path: Path) -> None:
    """--keep-checks: checks/iteration-N for N = 0 and every validation, each the weights validated then (with
    averaging, the average: its last equals the checkpoint's); the best of them is the folder's own weights."""
    out = tmp_path / "run"
    meta_train_main(["--task", "quadratic", "--iterations", "4", "--meta-batch", "2", "--eval-every", "2",
                     "--horizon", "4", "--truncation", "2", "--val-problems", "2", "--threads", "1", "--no-compile",
                     "--hidden-size", "4", "--average-decay", "0.5", "--keep-checks", "--out", str(out)])
    assert sorted(p.name for p in (out / "checks").iterdir()) == ["iteration-0", "iteration-2", "iteration-4"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    last = load_network(out / "checks" / "iteration-4").state_dict()
    assert all(torch.equal(value, checkpoint["averaged"]["module." + name]) for name, value in last.items())
    best = out / "checks" / f"iteration-{checkpoint['progress']['best_iteration']}"
    for name in ("config.json", "model.safetensors"):
        assert (best / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--curriculum", "4", "2"], "--curriculum must increase and stay below --horizon"),
    (["--curriculum", "3"], "--curriculum (3) must be a multiple of --truncation (2)"),
    (["--val-metric", "median"], "--val-metric must be 'loss' or 'log_ratio'"),
])
def test_curriculum_flags_are_checked(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        meta_train_main(["--horizon", "6", "--truncation", "2", *argv])
    assert message in capsys.readouterr().err


class Labelled:
    """A linear regression whose weight and bias are of two parameter classes ("w" and "b")."""

    name = "labelled"

    def sample(self, seed: int, split: str = "train") -> Problem:
        problem = make_task("teacher", inputs=3, hidden=(), samples=32, batch_size=8).sample(seed, split)
        names = list(problem.params)
        return dataclasses.replace(problem, param_classes={names[0]: "w", names[1]: "b"})


def test_one_network_per_parameter_class_in_the_unroll_equals_per_group_optimizer() -> None:
    nets = {"w": make_network(1, **SCALE_FREE), "b": make_network(2)}
    problem = Labelled().sample(0)
    run = Unroll.start([problem])
    with torch.no_grad():
        advance(nets, run, 6)
    params = {k: v.detach().clone().requires_grad_() for k, v in problem.params.items()}
    (w, b) = params.values()
    optimizer = LSTMOptimizer([{"params": [w], "weights": nets["w"]}, {"params": [b], "weights": nets["b"]}])
    for t in range(6):
        optimizer.zero_grad()
        problem.loss(params, t).backward()
        optimizer.step()
    for name, value in params.items():
        torch.testing.assert_close(value.detach(), run.params[0][name], rtol=1e-5, atol=1e-6)
    with pytest.raises(TaskError, match=r"without a network of their class \['b', 'x'\]"):
        advance({"b": nets["b"], "x": nets["w"]}, Unroll.start([problem]), 1)


def test_meta_train_writes_one_network_per_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    argv = ["--task", "test_meta:Labelled", "--param-classes", "w", "b", "--iterations", "2", "--meta-batch", "2",
            "--eval-every", "1", "--horizon", "4", "--truncation", "2", "--val-problems", "2", "--threads", "1",
            "--no-compile", "--hidden-size", "4"]
    meta_train_main([*argv, "--out", str(out)])
    first, second = load_network(out / "w"), load_network(out / "b")
    assert not torch.equal(first.head.weight, second.head.weight)  # two networks, trained separately
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {k.split(".")[0] for k in checkpoint["network"]} == {"w", "b"}
    meta_train_main([*argv, "--out", str(out), "--resume", "--iterations", "3"])
    with pytest.raises(SystemExit):
        meta_train_main([*argv[:2], "--param-classes", "conv", "--out", str(tmp_path / "bad"), *argv[5:]])
    assert "without a network of their class ['conv']" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_evaluate_runs_one_network_per_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nets = {"w": make_network(1), "b": make_network(2)}
    result = evaluate(Labelled(), nets, steps=5, runs=2, tune_runs=1, baselines=["sgd"], grid=[0.1])
    problem = Labelled().sample(1, "test")
    expected = run_optimizer(problem, lambda p: LSTMOptimizer([{"params": [p[0]], "weights": nets["w"]},
                                                               {"params": [p[1]], "weights": nets["b"]}]), 5)
    assert result["optimizers"]["learned"]["finals"][1] == expected.final
    for label, net in nets.items():
        net.save_pretrained(tmp_path / label)
    out = tmp_path / "out"
    evaluate_main(["--task", "test_meta:Labelled", "--weights", f"w={tmp_path / 'w'}", "--weights",
                   f"b={tmp_path / 'b'}", "--steps", "3", "--runs", "2", "--tune-runs", "1", "--threads", "1",
                   "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["weights"].startswith("w=")
    for bad in (["--weights", "w=", "--weights", "b=x"], ["--weights", f"w={tmp_path / 'w'}"]):
        with pytest.raises(SystemExit):
            evaluate_main(["--task", "test_meta:Labelled", *bad, "--out", str(out)])
    err = capsys.readouterr().err
    assert "give one name/folder/hub id, or CLASS=WEIGHTS once per class" in err
    assert "without a network of their class ['w']" in err


def test_card_sections_are_replaced_in_place(tmp_path: Path) -> None:
    from torch_lstm_optim.evaluation.evaluate import write_card_section

    (tmp_path / "README.md").write_text("---\nx: 1\n---\n# title\n\n## Evaluation\n\nold\n\n## Flags\n\nkept\n")
    write_card_section(tmp_path, "## Evaluation", "new")
    write_card_section(tmp_path, "## Suite", "added")
    assert (tmp_path / "README.md").read_text() == ("---\nx: 1\n---\n# title\n\n## Evaluation\n\nnew\n\n## Flags\n\n"
                                                    "kept\n\n## Suite\n\nadded\n")


class Solved:
    """A problem every baseline solves exactly at step 1 (loss 0): the ratio must not divide by zero."""

    name = "solved"

    def sample(self, seed: int, split: str = "train") -> Problem:
        return Problem(params={"x": torch.ones(1)}, loss=lambda p, step: (p["x"] - 1).square().sum())


def test_a_baseline_at_exactly_zero_loss_gives_a_ratio() -> None:
    result = evaluate(Solved(), make_network(), steps=2, runs=2, tune_runs=1, baselines=["sgd"], grid=[0.1])
    assert result["optimizers"]["sgd"]["final_mean"] == 0 and result["ratio_to_best"] in (1.0, math.inf)


@pytest.mark.parametrize("seed, warns", [(0, False), (1, True), (2, True), (3, False)])
def test_seeds_whose_training_problems_are_held_out_problems_warn(seed: int, warns: bool) -> None:
    """With --seed 1 or 2 a quadratic run's training problems ARE val or test problems (same generator seed)."""
    from torch_lstm_optim.meta.train import MetaTrainConfig, training_seeds, warn_if_seeds_meet_other_splits

    config = MetaTrainConfig(seed=seed, iterations=10, meta_batch=4)
    task = make_task("quadratic", dim=3)
    trained = {tuple(task.sample(s, "train").params["theta"].tolist()) for i in range(10)
               for s in training_seeds(config, i)}
    held_out = {tuple(task.sample(s, split).params["theta"].tolist()) for split in ("val", "test") for s in range(60)}
    assert bool(trained & held_out) == warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_seeds_meet_other_splits(config)
    assert [str(w.message).startswith(f"--seed {seed} draws") for w in caught] == ([True] if warns else [])


@pytest.mark.parametrize(("flag", "value", "changes", "first_step", "refused_by", "refusal"), [
    # first step: 1/30 of the rule's update instead of 1/10; a log_sign network has no step count to warm up with
    ("--init-warmup-steps", "30", dict(warmup_steps=30), 1 / 3, dict(), "config field 'warmup_steps' needs"),
    # the LSTM runs on step 1 whatever the interval; a direction_magnitude head has no outputs to keep between
    ("--init-lstm-every", "4", dict(lstm_every=4), 1.0, dict(preprocessing="scale_free"),
     "config field 'lstm_every' > 1 needs"),
])
def test_init_flags_change_one_field_of_the_starting_weights_and_nothing_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, changes: dict,
        first_step: float, refused_by: dict, refusal: str) -> None:
    source = make_network(seed=3, preprocessing="scale_free", output="momentum_mix", warmup_steps=10)
    source.save_pretrained(tmp_path / "w")
    config, network_config = parse_args(["--task", "quadratic", "--init-weights", str(tmp_path / "w"),
                                         flag, value, "--out", str(tmp_path / "out")])
    started = start_networks(config, network_config)
    assert started.config == dataclasses.replace(source.config, **changes)
    assert all(torch.equal(a, b) for a, b in zip(started.state_dict().values(), source.state_dict().values()))
    grad = torch.randn(50)
    with torch.no_grad():
        ours, theirs = started.step(grad, started.init_state(grad))[0], source.step(grad, source.init_state(grad))[0]
    torch.testing.assert_close(ours, theirs * first_step)
    with pytest.raises(SystemExit):
        parse_args(["--task", "quadratic", flag, value])
    assert f"{flag} needs --init-weights" in capsys.readouterr().err
    make_network(seed=3, **refused_by).save_pretrained(tmp_path / "refused")
    config, network_config = parse_args(["--task", "quadratic", "--init-weights", str(tmp_path / "refused"),
                                         flag, value, "--out", str(tmp_path / "out")])
    with pytest.raises(WeightsError, match=f"{flag} {value}: {refusal}"):
        start_networks(config, network_config)
