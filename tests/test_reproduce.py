"""``python -m torch_lstm_optim.reproduce --quick`` on tiny data written here (never ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch

from conftest import make_network
from torch_lstm_optim import bundled_names
from torch_lstm_optim.evaluation import reproduce
from torch_lstm_optim.meta.tasks import neural_art

pytest.importorskip("torchvision")
pytest.importorskip("matplotlib")

from test_cifar import accept_generated_files, write_cifar10  # noqa: E402
from test_tasks import write_mnist  # noqa: E402

MNIST_KEYS = ["mnist-mlp", "mnist-steps200", "mnist-hidden40", "mnist-layers2", "mnist-relu"]
ART_KEYS = ["neural-art-64", "neural-art-128"]


def synthetic_photographs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image name of the neural-art task gives a random 24x32 image of its own: no scikit-image needed."""
    monkeypatch.setattr(neural_art, "load_image", lambda source: torch.rand(
        3, 24, 32, generator=torch.Generator().manual_seed(sum(map(ord, source)))))


def test_quick_run_writes_every_row_a_plot_per_experiment_and_a_table(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic_photographs(monkeypatch)
    data = write_mnist(tmp_path / "data")
    out = tmp_path / "out"
    reproduce.main(["--out", str(out), "--quick", "--data-dir", str(data)])
    summary = json.loads((out / "results.json").read_text())
    rows = {row["key"]: row for row in summary["experiments"]}
    assert list(rows) == [e.key for e in reproduce.EXPERIMENTS]
    assert summary["quick"] and summary["command"].startswith("python -m torch_lstm_optim.reproduce --out")
    for key in ["quadratic", *MNIST_KEYS]:
        row = rows[key]
        assert row["status"] == "run" and isinstance(row["held"], bool), key
        assert set(row["result"]["optimizers"]) == {"learned", "sgd", "nag", "rmsprop", "adam"}
        assert row["result"]["runs"] == 2 and row["result"]["tune_runs"] == 1
        assert (out / f"{key}.png").stat().st_size > 0
    assert rows["mnist-steps200"]["result"]["steps"] == 20 and rows["mnist-mlp"]["result"]["steps"] == 10
    assert rows["mnist-hidden40"]["result"]["task_options"]["hidden"] == [40]
    assert rows["mnist-relu"]["held"] == (not rows["mnist-relu"]["result"]["beats_best_by_se"])
    for key in ("cifar10", "cifar5", "cifar2"):
        assert rows[key]["status"] == (f"not run: no CIFAR-10 data under {data}; no weights 'cifar10-conv' "
                                       f"(bundled: {', '.join(bundled_names())})")
        assert rows[key]["held"] is None and not (out / f"{key}.png").exists()
    # Neural art: weights meta-trained first into the output folder, then evaluated with the generalist beside.
    for key in ART_KEYS:
        row = rows[key]
        assert row["status"] == "run" and row["result"]["steps"] == 12 and row["result"]["task"] == "neural-art"
        assert set(row["result"]["optimizers"]) == {"learned", "sgd", "nag", "rmsprop", "adam", "generalist weights"}
        assert row["result"]["best_baseline"] in ("sgd", "nag", "rmsprop", "adam")
        assert row["result"]["meta_train"]["iterations"] == 1 and "--resume" in row["result"]["meta_train"]["command"]
        assert row["result"]["features"] == "random features (2 scales x 4 filters 5x5, seed 0), not VGG-19"
        assert (out / f"{key}.png").stat().st_size > 0 and (out / f"{key}-images.png").stat().st_size > 0
    assert rows["neural-art-128"]["result"]["task_options"]["style"] == neural_art.TEST_STYLE
    assert rows["neural-art-64"]["result"]["weights_sha256"] == rows["neural-art-128"]["result"]["weights_sha256"]
    assert (out / "neural-art-optimizer" / "model.safetensors").exists()
    printed = capsys.readouterr().out
    table = printed.split("\n\n")[0]
    assert "| MNIST MLP, ReLU (Fig. 5 right) | 10 |" in table and "not run: no CIFAR-10 data" in table
    assert table.count("\n| ") == len(reproduce.EXPERIMENTS)  # the header starts the table
    assert "| generalist weights | 1 (untuned) |" in printed and "Not matched: the features are" in printed

    # A rerun with the same settings reuses what is done (an interrupted run resumes); --only keeps the other rows.
    reproduce.main(["--out", str(out), "--quick", "--data-dir", str(data), "--only", "mnist-mlp"])
    assert "mnist-mlp: done before, reused" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["experiments"] == summary["experiments"]
    reproduce.main(["--out", str(out), "--quick", "--data-dir", str(data), "--only", "neural-art"])  # a group
    err = capsys.readouterr().err
    assert all(f"{key}: done before, reused" in err for key in ART_KEYS)

    # A run with other settings never replaces these results, unless asked to.
    full = {**summary, "quick": False, "command": "python -m torch_lstm_optim.reproduce --out elsewhere"}
    (out / "results.json").write_text(json.dumps(full))
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--out", str(out), "--quick", "--data-dir", str(data), "--only", "mnist-mlp"])
    assert stop.value.code == 2 and "holds the results of another command" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == full
    reproduce.main(["--out", str(out), "--quick", "--data-dir", str(data), "--only", "mnist-mlp", "--overwrite"])
    again = json.loads((out / "results.json").read_text())
    assert again["quick"] and [row["key"] for row in again["experiments"]] == ["mnist-mlp"]
    assert "--overwrite" not in again["command"]

    # Once the bundled name holds other weights (a new release), the cached result no longer stands for it.
    cached = json.loads((out / "mnist-mlp.json").read_text())
    cached["result"]["weights_sha256"] = "0" * 64
    (out / "mnist-mlp.json").write_text(json.dumps(cached))
    reproduce.main(["--out", str(out), "--quick", "--data-dir", str(data), "--only", "mnist-mlp"])
    assert "mnist-mlp: ..." in capsys.readouterr().err
    assert json.loads((out / "mnist-mlp.json").read_text())["result"]["weights_sha256"] == \
        reproduce.bundled_fingerprint("mnist-mlp")


def test_a_cifar_row_runs_when_data_and_weights_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accept_generated_files(monkeypatch)
    data = write_cifar10(tmp_path / "data")
    rows = reproduce.reproduce(tmp_path / "out", str(data), quick=True, only=["cifar2"])
    assert rows[0]["status"] == f"not run: no weights 'cifar10-conv' (bundled: {', '.join(bundled_names())})"
    assert rows[0]["settings"]["task_options"]["classes"] == (0, 1)

    monkeypatch.setattr(reproduce, "bundled_names", lambda: ["cifar10-conv"])
    monkeypatch.setattr(reproduce, "load_network", lambda weights: make_network())
    row = reproduce.reproduce(tmp_path / "out", str(data), quick=True, only=["cifar10"])[0]
    assert row["status"] == "run" and row["result"]["task"] == "cifar10-conv"
    assert (tmp_path / "out" / "cifar10.png").exists()


def test_missing_mnist_is_a_row_not_a_crash(tmp_path: Path) -> None:
    row = reproduce.reproduce(tmp_path / "out", str(tmp_path / "none"), quick=True, only=["mnist-mlp"])[0]
    assert row["status"].startswith("not run: MNIST not found under") and row["held"] is None


def test_rows_cached_before_an_experiment_field_existed_still_match() -> None:
    experiment = reproduce.EXPERIMENTS[0]
    recorded = json.loads(json.dumps(reproduce.asdict(experiment)))
    for added in ("group", "meta_train", "also", "each_baseline", "images", "notes", "grid"):
        del recorded[added]
    assert reproduce.same_experiment(recorded, experiment)
    assert not reproduce.same_experiment({**recorded, "runs": 3}, experiment)


def test_the_held_column_says_when_the_learned_optimizer_does_better_than_the_paper() -> None:
    from torch_lstm_optim.evaluation.reproduce import held_text

    assert held_text({"held": True, "claim": "beats"}) == "yes"
    assert held_text({"held": False, "claim": "beats"}) == "no"
    assert held_text({"held": False, "claim": "fails"}) == "no: it beats them, better than the paper"
