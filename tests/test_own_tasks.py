"""Users' own tasks (issue 12): a task defined here goes through ``meta_train`` and ``evaluate`` by its path like a
built-in one; ``check_task`` names what is wrong with a bad one; fine-tuning records its parent weights in the model
card; ``examples/own_task.py`` runs end to end."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_lstm_optim import CoordinatewiseLSTM, load_network
from torch_lstm_optim.evaluation.evaluate import evaluate
from torch_lstm_optim.meta.train import main as meta_train
from torch_lstm_optim.meta.tasks import Problem, SeedSplits, TaskError, make_task, module_problem, step_generator
from torch_lstm_optim.weights import WeightsSource, read_folder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--iterations", "3", "--horizon", "4", "--truncation", "2", "--meta-batch", "2", "--val-problems", "2",
        "--eval-every", "1", "--no-compile", "--threads", "1"]


@dataclass
class LineFits:
    """A user's family, the way the README writes one: fit a line to noisy points, by minibatches, through
    ``module_problem``; ``sample(seed)`` takes no split, so the library splits by seed."""

    points: int = 16
    name: str = "line-fits"

    def sample(self, seed: int) -> Problem:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.points, 1, generator=gen)
        y = 3 * x - 1 + 0.1 * torch.randn(self.points, 1, generator=gen)
        model = nn.Linear(1, 1)
        with torch.no_grad():
            model.weight.normal_(generator=gen)
            model.bias.zero_()

        def batch_loss(forward, step: int) -> torch.Tensor:
            index = torch.randint(self.points, (4,), generator=step_generator(seed, step))
            return F.mse_loss(forward(x[index]), y[index])

        return module_problem(model, batch_loss, eval_loss=lambda forward: F.mse_loss(forward(x), y),
                              param_classes={"weight": "matrix"})


def test_user_task_splits_by_seed() -> None:
    task = make_task(f"{__name__}:LineFits", points=8)
    assert isinstance(task, SeedSplits) and task.name == "line-fits"
    weights = {split: task.sample(0, split).params["weight"] for split in ("train", "val", "test")}
    assert torch.equal(task.sample(0, "val").params["weight"], weights["val"])  # same arguments, same problem
    assert len({float(w) for w in weights.values()}) == 3  # held-out problems differ from training ones


def test_user_task_meta_trains_and_evaluates(tmp_path: Path) -> None:
    """By path, with options, through the meta-trainer's CLI and the evaluation: as a built-in task would."""
    out = tmp_path / "run"
    meta_train(["--task", f"{__name__}:LineFits", "--task-arg", "points=8", "--out", str(out), *TINY,
                "--preprocessing", "scale_free", "--log-rms-feature", "--output", "direction_magnitude"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if r["iteration"] > 0] == [1, 2, 3]
    assert all(math.isfinite(r["val"]) for r in log)
    assert f"meta-trained on `{__name__}:LineFits`" in (out / "README.md").read_text()
    result = evaluate(make_task(f"{__name__}:LineFits", points=8), load_network(out), steps=3, runs=2, tune_runs=1,
                      baselines=("adam",), grid=(0.1,))
    assert result["task"] == "line-fits" and set(result["optimizers"]) == {"learned", "adam"}
    assert all(math.isfinite(r["final_mean"]) for r in result["optimizers"].values())


class ClosesOverModule(LineFits):
    """The classic mistake: the loss uses the module's own parameters, not those passed in."""

    def sample(self, seed: int) -> Problem:
        model = nn.Linear(1, 1)
        return Problem(params={k: v.detach() for k, v in model.named_parameters()},
                       loss=lambda params, step: model(torch.ones(1, 1)).square().sum())


class Unseeded(LineFits):
    """Another classic: the initialisation drawn from the global RNG, so each optimizer would start elsewhere."""

    def sample(self, seed: int) -> Problem:
        return Problem(params={"x": torch.randn(2)}, loss=lambda params, step: params["x"].square().sum())


class UnusedParameter(LineFits):
    def sample(self, seed: int) -> Problem:
        return Problem(params={"x": torch.ones(2), "spare": torch.ones(3)},
                       loss=lambda params, step: params["x"].square().sum())


class BadClasses(LineFits):
    def sample(self, seed: int) -> Problem:
        problem = super().sample(seed)
        problem.param_classes = {"nope": "matrix"}
        return problem


class LossRaises(LineFits):
    def sample(self, seed: int) -> Problem:
        return Problem(params={"x": torch.ones(2)}, loss=lambda params, step: params["x"] @ torch.ones(3))


class EvalNotScalar(LineFits):
    def sample(self, seed: int) -> Problem:
        return Problem(params={"x": torch.ones(2)}, loss=lambda params, step: params["x"].sum(),
                       eval_loss=lambda params: params["x"])


@dataclass
class NoValidation:
    """Takes a split, but only knows ``train``: found before training, not at the first validation."""

    name: str = "no-val"

    def sample(self, seed: int, split: str = "train") -> Problem:
        if split != "train":
            raise KeyError(split)
        return Problem(params={"x": torch.ones(2)}, loss=lambda params, step: params["x"].square().sum())


@pytest.mark.parametrize("factory, message", [
    ("ClosesOverModule", r"sample\(0\): loss\(params, 0\) does not depend on parameters \['weight', 'bias'\]"),
    ("UnusedParameter", r"does not depend on parameters \['spare'\]"),
    ("BadClasses", r"param_classes must map parameter names to str labels, found unknown names \['nope'\]"),
    ("LossRaises", "computing the loss failed: RuntimeError"),
    ("EvalNotScalar", r"eval_loss\(params\) must return a scalar tensor, found \(2,\)"),
    ("NoValidation", r"sample\(0, 'val'\) failed: KeyError"),
    ("Unseeded", r"sample\(10000000\) twice gave different initial parameters"),
])
def test_bad_user_tasks_say_what_is_wrong(factory: str, message: str) -> None:
    with pytest.raises(TaskError, match=rf"task '{__name__}:{factory}': .*{message}"):
        make_task(f"{__name__}:{factory}")


def card_of(out: Path) -> str:
    return (out / "README.md").read_text(encoding="utf-8")


def test_fine_tuning_records_the_parent_weights(tmp_path: Path, weights_folder: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A local parent: its folder and the sha256 of its weights file (no revision); resuming from another parent
    would make another run, so it is refused."""
    out = tmp_path / "tuned"
    meta_train(["--task", "quadratic", "--task-arg", "dim=3", "--init-weights", str(weights_folder),
                "--out", str(out), *TINY])
    digest = hashlib.sha256((weights_folder / "model.safetensors").read_bytes()).hexdigest()
    assert (f"- fine-tuned from `{weights_folder}` at revision `none (bundled or local)`, model.safetensors "
            f"sha256 `{digest}`") in card_of(out)
    assert "base_model" not in card_of(out)
    other = tmp_path / "other"
    load_network(weights_folder).save_pretrained(other)
    with pytest.raises(SystemExit):
        meta_train(["--task", "quadratic", "--task-arg", "dim=3", "--init-weights", str(other), "--out", str(out),
                    "--resume", *TINY])
    assert "init_weights" in capsys.readouterr().err


def test_fine_tuning_a_hub_repo_records_its_commit(tmp_path: Path, weights_folder: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub parent: the commit it resolved to, and ``base_model`` in the card's metadata for the hub to link."""
    from huggingface_hub import ModelCard

    def from_hub(weights: str) -> CoordinatewiseLSTM:
        network = read_folder(weights_folder)
        network.source = WeightsSource(weights, str(weights_folder), "0123abc")
        return network

    monkeypatch.setattr("torch_lstm_optim.meta.train.load_network", from_hub)
    out = tmp_path / "tuned"
    meta_train(["--task", "quadratic", "--task-arg", "dim=3", "--init-weights", "org/name", "--out", str(out),
                *TINY])
    assert "- fine-tuned from `org/name` at revision `0123abc`" in card_of(out)
    assert ModelCard.load(out / "README.md").data.base_model == "org/name"


def test_own_task_example_runs_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick``: fine-tune, compare, and train with the result, on a few tiny problems (seconds)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as when run as ``python examples/own_task.py``
    spec = importlib.util.spec_from_file_location("own_task", EXAMPLES / "own_task.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "own_task", example)
    spec.loader.exec_module(example)
    out = tmp_path / "own"
    result = example.main(["--quick", "--out", str(out)])
    assert set(result["optimizers"]) == {"learned", "adam", example.START}
    assert all(math.isfinite(r["final_mean"]) for r in result["optimizers"].values())
    assert json.loads((out / "comparison.json").read_text())["task"] == "teacher-mlps"
    assert f"fine-tuned from `{out / 'start'}`" in card_of(out)
    losses = example.use(str(out), example.TeacherMLPs(), steps=3)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
