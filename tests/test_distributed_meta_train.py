"""Distributed meta-training (issue 7): ``torchrun --nproc-per-node 2 -m torch_lstm_optim.meta_train`` (gloo, CPU)
ends where one process on the same meta-batches does, within float rounding.

One ``torchrun`` launch of this file (see :func:`launch`) runs the meta-trainer's CLI on each case in turn, and each
is compared with the same flags run in this process: the paper's quadratics with one network, and
:class:`TwoClasses` with one network per parameter class, where one process's share holds no parameter of one class
and one process's problem diverges in the middle of an episode (both processes must skip it together, or the next
collective would hang). Most of the launch's time is spent importing torch in three processes.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import torchrun
from safetensors.torch import load_file

from torch_lstm_optim.meta import distributed
from torch_lstm_optim.meta.train import main
from torch_lstm_optim.meta.tasks import Problem

COMMON = ["--iterations", "3", "--meta-batch", "4", "--eval-every", "1", "--no-compile", "--threads", "1",
          "--hidden-size", "8"]
CASES = {
    "quadratic": ["--task", "quadratic", "--horizon", "20", "--truncation", "10", "--val-problems", "5"],
    "two_classes": ["--task", "test_distributed_meta_train:TwoClasses", "--param-classes", "w", "b", "--horizon",
                    "6", "--truncation", "2", "--val-problems", "3", "--objective", "log"],
}
DIVERGING_SEED = 5  # meta-iteration 1 (seeds 4..7), the share of process 1 (seeds 5 and 7)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")


class TwoClasses:
    """Least squares on 16 points, the weight of class "w" and, for odd seeds only, a bias of class "b": with the
    meta-batch shared out as seeds[rank::2], process 0 never has a "b" parameter. Training problem
    ``DIVERGING_SEED``'s loss is infinite from step 3 on."""

    name = "two-classes"

    def sample(self, seed: int, split: str = "train") -> Problem:
        generator = torch.Generator().manual_seed(seed * 3 + ("train", "val", "test").index(split))
        x, y = torch.randn(16, 3, generator=generator), torch.randn(16, generator=generator)
        params = {"w": torch.randn(3, generator=generator)} | ({"b": torch.zeros(1)} if seed % 2 else {})
        diverges = split == "train" and seed == DIVERGING_SEED

        def loss(p: dict[str, torch.Tensor], step: int = 0) -> torch.Tensor:
            value = ((x @ p["w"] + p["b"] if "b" in p else x @ p["w"]) - y).square().mean()
            return value * math.inf if diverges and step >= 3 else value

        return Problem(params=params, loss=loss, param_classes={name: name for name in params})


def launch(out: Path) -> None:
    """One process of the launch: ``torchrun --nproc-per-node 2 tests/test_distributed_meta_train.py OUT`` runs
    ``python -m torch_lstm_optim.meta_train``'s ``main`` with each case's flags into ``OUT/<case>``. One launch, not
    one per case (each costs seconds of imports), so one process group for both runs (``main`` then leaves it be):
    a default group destroyed and initialised again in one process can meet the first one's rendezvous keys in
    torchrun's store and hang."""
    with distributed.process_group():
        for case, flags in CASES.items():
            main([*flags, *COMMON, "--out", str(out / case)])


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The launch's output folder (a sub-folder per case) and its stdout."""
    out = tmp_path_factory.mktemp("two_processes")

    def prepare() -> None:
        shutil.rmtree(out)
        out.mkdir()

    return out, torchrun([__file__, str(out)], timeout=180, prepare=prepare).stdout


def records(out: Path) -> list[dict[str, Any]]:
    """``log.jsonl`` without the wall-clock field."""
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed"}
            for line in (out / "log.jsonl").read_text().splitlines()]


def weight_files(out: Path) -> list[Path]:
    return sorted(out.rglob("model.safetensors"))


@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one_process_on_the_same_meta_batch(launched: tuple[Path, str], tmp_path: Path,
                                                                case: str) -> None:
    two, one = launched[0] / case, tmp_path / "one"
    assert launched[1].count(f"weights in {two}\n") == 1  # rank 0 alone reports (and writes)
    main([*CASES[case], *COMMON, "--out", str(one)])

    assert sorted(p.relative_to(two) for p in two.rglob("*")) == sorted(p.relative_to(one) for p in one.rglob("*"))
    assert [f.relative_to(two) for f in weight_files(two)] == [f.relative_to(one) for f in weight_files(one)]
    for found, expected in zip(weight_files(two), weight_files(one)):
        found, expected = load_file(found), load_file(expected)
        for name, tensor in expected.items():  # averaging rounds differently from one process's mean
            torch.testing.assert_close(found[name], tensor, rtol=1e-5, atol=1e-5, msg=name)

    logged, expected = records(two), records(one)
    assert [r.keys() for r in logged] == [r.keys() for r in expected]
    for found, wanted in zip(logged, expected):  # iterations, skipped counts and horizons equal, scores close
        assert found == pytest.approx(wanted, rel=1e-5)
    progress = [torch.load(out / "checkpoint.pt", weights_only=True)["progress"] for out in (two, one)]
    for key in ("iteration", "meta_updates", "skipped", "best_iteration", "stage"):
        assert progress[0][key] == progress[1][key], key
    if case == "two_classes":
        assert progress[0]["skipped"] == 1 and progress[0]["meta_updates"] == 3 * 3 - 2  # one episode cut short
    card = (two / "README.md").read_text()
    assert "torchrun --nproc-per-node 2 -m torch_lstm_optim.meta_train" in card and "2 processes" in card


def test_a_meta_batch_not_divisible_by_the_processes_stops_with_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked from torchrun's ``WORLD_SIZE`` before the process group starts, so this process stands for each."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as stopped:
        main([*CASES["quadratic"], *COMMON, "--meta-batch", "3", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    assert "error: --meta-batch (3) must be a multiple of the number of processes (2)" in err
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":
    launch(Path(sys.argv[1]))
