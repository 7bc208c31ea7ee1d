"""The meta-trainer survives interruption and bad input (issue 5).

SIGKILL at random moments (a real subprocess) never leaves a corrupt checkpoint or weight file, and ``--resume``
finishes the run with the same result, bit for bit, as an uninterrupted one. A diverging unroll is skipped and
counted; too many in a row stop the run with the best weights intact. Bad flags, a missing data set, bad weights,
a bad checkpoint or an unusable output folder stop with one ``error:`` line, a non-zero exit code and nothing written.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from torch_lstm_optim import CoordinatewiseLSTM, NetworkConfig, load_network
from torch_lstm_optim.meta.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--task", "quadratic", "--iterations", "6", "--horizon", "4", "--truncation", "2", "--meta-batch", "2",
        "--val-problems", "2", "--eval-every", "2", "--no-compile", "--threads", "1"]


def meta_train(out: Path, *flags: str) -> None:
    """An in-process run of the CLI on tiny quadratics; later flags override ``TINY``'s."""
    main([*TINY, "--out", str(out), *flags])


def failing(capsys: pytest.CaptureFixture[str], out: Path, *flags: str) -> tuple[int, str]:
    """Run the CLI expecting it to stop; return its exit code and what it wrote to stderr."""
    capsys.readouterr()  # forget the output of earlier runs in the test
    with pytest.raises(SystemExit) as stopped:
        meta_train(out, *flags)
    return stopped.value.code, capsys.readouterr().err


def records(out: Path) -> list[dict[str, Any]]:
    """``log.jsonl`` without the wall-clock field, which differs between any two runs."""
    lines = (out / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed"} for line in lines]


def assert_equal_tree(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_result(a: Path, b: Path) -> None:
    """Two runs ended with the same network, meta-optimizer, progress, best weights and log."""
    first, second = (torch.load(out / "checkpoint.pt", weights_only=True) for out in (a, b))
    for key in ("network", "meta_optimizer", "averaged", "network_config"):
        assert_equal_tree(first[key], second[key], key)
    assert_equal_tree({k: v for k, v in first["progress"].items() if k != "elapsed"},
                      {k: v for k, v in second["progress"].items() if k != "elapsed"}, "progress")
    for name in ("config.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert records(a) == records(b)


# --- resume and interruption --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--average-decay", "0.5"]], ids=["plain", "averaged"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path: Path, flags: list[str]) -> None:
    meta_train(tmp_path / "straight", "--iterations", "8", *flags)
    meta_train(tmp_path / "split", "--iterations", "4", *flags)
    meta_train(tmp_path / "split", "--iterations", "8", "--resume", *flags)
    assert_same_result(tmp_path / "straight", tmp_path / "split")


def test_a_checkpoint_from_before_a_config_field_existed_resumes(tmp_path: Path) -> None:
    """A campaign's checkpoint written before a network config field was added (``warmup_steps``) resumes, with the
    field at the value it was trained with, to the same result as a run that had the field all along."""
    meta_train(tmp_path / "straight", "--iterations", "4")
    meta_train(tmp_path / "split", "--iterations", "2")
    checkpoint = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    del checkpoint["network_config"]["warmup_steps"]
    torch.save(checkpoint, tmp_path / "split" / "checkpoint.pt")
    meta_train(tmp_path / "split", "--iterations", "4", "--resume")
    assert_same_result(tmp_path / "straight", tmp_path / "split")


def check_intact(out: Path) -> int:
    """What a kill may leave: the checkpoint and the weights each complete (or not yet written); return the
    checkpoint's iteration."""
    checkpoint_path = out / "checkpoint.pt"
    iteration = 0
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        network = CoordinatewiseLSTM(NetworkConfig.from_dict(checkpoint["network_config"]))
        network.load_state_dict(checkpoint["network"])
        assert {"state", "param_groups"} <= set(checkpoint["meta_optimizer"])
        iteration = checkpoint["progress"]["iteration"]
    written = [name for name in ("config.json", "model.safetensors") if (out / name).exists()]
    assert written in ([], ["config.json", "model.safetensors"]), written
    if written:
        load_network(out)
    if (out / "log.jsonl").exists():
        for line in (out / "log.jsonl").read_text().splitlines():
            json.loads(line)
    return iteration


def start(out: Path, stderr: Path, *flags: str) -> subprocess.Popen:
    """``python -m torch_lstm_optim.meta_train`` as a real process, its stderr (tqdm's bar) into a file."""
    with open(stderr, "w") as handle:
        return subprocess.Popen([sys.executable, "-m", "torch_lstm_optim.meta_train", *TINY, "--out", str(out),
                                 *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def wait_for_training(process: subprocess.Popen, stderr: Path) -> None:
    """Until the training loop runs (its progress bar is drawn): start-up (imports) takes seconds."""
    deadline = time.monotonic() + 120
    while "meta-train" not in stderr.read_text() and process.poll() is None:
        assert time.monotonic() < deadline, "the meta-trainer did not start"
        time.sleep(0.01)


def interrupt_then_finish(tmp_path: Path, moments: list[str], seed: int) -> list[bool]:
    """Start the same ``--resume`` command again and again and interrupt it at random: ``"start-up"`` (SIGKILL
    during the imports), ``"training"`` (SIGKILL while it trains: with a checkpoint written every iteration and the
    best weights often, a kill often lands in a write) or ``"Ctrl-C"`` (SIGINT while it trains). After each, the
    files must be intact. Then it runs to the end (in-process, to save a start-up) and must equal an uninterrupted
    run. Returns, per interruption, whether it left a ``.tmp`` file: whether it landed in a write."""
    flags = ["--iterations", "40", "--eval-every", "1"]
    meta_train(tmp_path / "reference", *flags)
    out, stderr, rng = tmp_path / "killed", tmp_path / "stderr.txt", random.Random(seed)
    iterations, in_a_write = [], []
    for moment in moments:
        process = start(out, stderr, *flags, "--resume")
        if moment == "start-up":
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            wait_for_training(process, stderr)
            time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGINT if moment == "Ctrl-C" else signal.SIGKILL)
        code = process.wait(timeout=60)
        if moment == "Ctrl-C" and code != 0:  # code 0: it had finished before the signal came
            assert code == 130 and "continue with --resume" in stderr.read_text(), stderr.read_text()
            assert "Traceback" not in stderr.read_text()
        iterations.append(check_intact(out))
        in_a_write.append(out.exists() and any(p.name.endswith(".tmp") for p in out.iterdir()))
    assert iterations == sorted(iterations), iterations
    meta_train(out, *flags, "--resume")
    assert_same_result(tmp_path / "reference", out)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    return in_a_write


def test_sigkill_at_random_moments_never_corrupts_and_resume_finishes_the_same_run(tmp_path: Path) -> None:
    interrupt_then_finish(tmp_path, ["start-up", "training", "Ctrl-C"], seed=0)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_writes(tmp_path: Path) -> None:
    """Twelve kills while training: at least one must have landed in a write for the test to say anything."""
    in_a_write = interrupt_then_finish(tmp_path, ["training"] * 12, seed=1)
    assert any(in_a_write), "no kill landed in a write; run again"


# --- diverging unrolls ----------------------------------------------------------------------------------------------


def test_diverging_unrolls_are_skipped_and_counted(tmp_path: Path) -> None:
    """Every other meta-iteration has a problem whose loss becomes infinite: those are skipped, the others train."""
    out = tmp_path / "run"
    meta_train(out, "--task", "diverging_task:Diverging", "--task-arg", "every=4", "--max-nonfinite", "2")
    assert [r["skipped"] for r in records(out) if r["iteration"] >= 1] == [1, 1, 2, 2, 3, 3]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["skipped"] == 3
    assert checkpoint["progress"]["meta_updates"] == 3 * 2  # 3 iterations trained, 2 truncations each
    assert all(torch.isfinite(v).all() for v in checkpoint["network"].values())
    load_network(out)


def test_too_many_diverging_unrolls_in_a_row_stop_with_the_best_weights_intact(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Problems diverge from meta-iteration 5 on (seeds >= 8): after 3 in a row the run stops. The best weights
    are those of the same run on the plain quadratics up to iteration 4."""
    out = tmp_path / "diverging"
    code, err = failing(capsys, out, "--task", "diverging_task:Diverging", "--task-arg", "from_seed=8",
                        "--iterations", "20", "--max-nonfinite", "3")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: 3 meta-iterations in a row had a non-finite meta-loss")
    assert "Traceback" not in err
    meta_train(tmp_path / "plain", "--iterations", "4")
    for name in ("config.json", "model.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["in_a_row"] == 2


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--horizon", "0"], "--horizon must be >= 1"),
    (["--horizon", "5"], "--horizon (5) must be a multiple of --truncation (2)"),
    (["--objective", "max"], "--objective must be 'sum', 'log' or 'final'"),
    (["--meta-lr", "fast"], "argument --meta-lr: invalid float value: 'fast'"),
    (["--hidden-size", "1000000000"], "config field 'hidden_size' must be in"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--task-arg", "dim"], "--task-arg expects key=value, found 'dim'"),
    (["--average-decay", "1"], "--average-decay must be in [0, 1), found 1.0"),
    (["--log-floor", "1", "--objective", "log"], "--log-floor must be in [0, 1), found 1.0"),
    (["--log-floor", "1e-4"], "--log-floor needs a log objective: --objective log or final"),
    (["--meta-lr", "-1"], "--meta-lr must be a finite number >= 0, found -1.0"),
    (["--meta-lr", "inf"], "--meta-lr must be a finite number >= 0, found inf"),
    (["--head-lr", "nan"], "--head-lr must be a finite number >= 0, found nan"),
    (["--clip", "nan"], "--clip must be a finite number > 0, found nan"),
    (["--clip", "0"], "--clip must be a finite number > 0, found 0.0"),
    (["--init-lr", "nan"], "--init-lr must be a finite number > 0, found nan"),
    (["--seed", str(2**70)], "--seed must be in [0, 2147483648)"),
    (["--max-nonfinite", "0"], "--max-nonfinite >= 1"),
    (["--init-rule", "foo"], "--init-rule must be 'adam', 'nag' or 'transplant', found 'foo'"),
    (["--out", ""], "--out must name a folder"),
    (["--task-arg", "name=x"], "--task-arg name: not a task option"),
    (["--push-to-hub", "not a valid id!!"], "--push-to-hub: 'not a valid id!!' is not a valid hub repo id"),
])
def test_bad_flags_stop_with_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                           message: str) -> None:
    code, err = failing(capsys, tmp_path / "run", *flags)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--task", "nosuch"], "error: unknown task 'nosuch'"),
    (["--task", "nosuch_module:factory"], "error: task 'nosuch_module:factory': cannot import"),
    (["--task-arg", "size=3"], "error: task 'quadratic': bad options"),
    (["--task-arg", "dim=-1"], "error: task 'quadratic': dim must be an int >= 1, found -1"),
    (["--task-arg", "dim=0"], "error: task 'quadratic': dim must be an int >= 1, found 0"),
    (["--task-arg", "condition=nan"], "error: task 'quadratic': condition must be a finite number >= 1"),
    (["--init-weights", "no-such-weights"], "error: unknown weights 'no-such-weights'"),
])
def test_bad_task_or_weights_stop_with_one_error_line_and_nothing_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    code, err = failing(capsys, tmp_path / "run", *flags)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_missing_data_set_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torchvision")
    (tmp_path / "empty").mkdir()
    code, err = failing(capsys, tmp_path / "run", "--task", "mnist-mlp", "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and err.startswith("error: MNIST not found under") and "Traceback" not in err
    assert "--task-arg download=True" in err and "--data-dir" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["under a file", "is a file"])
def test_an_unusable_output_folder_stops_with_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             where: str) -> None:
    """(Permissions cannot be tested reliably: tests may run as root. A path through a file fails for anyone.)"""
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "run" if where == "under a file" else tmp_path / "file"
    code, err = failing(capsys, out)
    assert code == 1 and err.startswith(f"error: cannot write to the output folder {out}") and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["file"]


def edit_checkpoint(path: Path, **entries: Any) -> None:
    """Replace entries of a checkpoint; ``network=None`` puts a NaN into every weight instead."""
    checkpoint = torch.load(path, weights_only=True)
    if entries.get("network", ...) is None:
        entries["network"] = {k: torch.full_like(v, math.nan) for k, v in checkpoint["network"].items()}
    torch.save({**checkpoint, **entries}, path)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:1000]), "cannot be read"),
    (lambda path: path.write_bytes(b"garbage"), "cannot be read"),
    (lambda path: torch.save({"network": {}}, path), "cannot be read"),
    (lambda path: edit_checkpoint(path, progress=[]), "cannot be read"),
    (lambda path: edit_checkpoint(path, progress={"best_val": 1.0}), "cannot be read"),
    (lambda path: edit_checkpoint(path, network=None), "cannot be read"),
], ids=["truncated", "garbage", "missing entries", "progress a list", "progress incomplete", "nan network"])
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           damage: Any, message: str) -> None:
    out = tmp_path / "run"
    meta_train(out, "--iterations", "2")
    damage(out / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = failing(capsys, out, "--iterations", "4", "--resume")
    assert code == 2 and err.startswith(f"error: {out / 'checkpoint.pt'}: {message}") and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("flags, field", [(["--hidden-size", "7"], "hidden_size"), (["--seed", "5"], "seed"),
                                          (["--meta-batch", "3"], "meta_batch"),
                                          (["--average-decay", "0.9"], "average_decay"),
                                          (["--objective", "log", "--log-floor", "1e-3"], "log_floor")])
def test_resuming_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 flags: list[str], field: str) -> None:
    """The run would silently become another one; ``--iterations`` (and the like) may change, these may not."""
    out = tmp_path / "run"
    meta_train(out, "--iterations", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = failing(capsys, out, "--iterations", "4", "--resume", *flags)
    assert code == 2 and err.startswith(f"error: {out / 'checkpoint.pt'}: ") and field in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_new_run_into_a_folder_holding_a_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Forgetting ``--resume`` would overwrite hours of work: refused, nothing changed."""
    out = tmp_path / "run"
    meta_train(out, "--iterations", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = failing(capsys, out, "--iterations", "4")
    assert code == 2 and err.startswith(f"error: {out / 'checkpoint.pt'}: {out} holds a run already; pass --resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("files", [["config.json", "model.safetensors", "README.md"], ["log.jsonl"]],
                         ids=["weights", "log"])
@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["new", "resume"])
def test_a_folder_with_files_but_no_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          files: list[str], resume: list[str]) -> None:
    """A folder of weights (say, a copy of bundled ones) is not a run: --resume continues a checkpoint, never
    adopts a folder, and a new run does not write over files it did not make."""
    out = tmp_path / "weights"
    make_network_folder(out)
    (out / "log.jsonl").write_text("kept\n")
    for name in {"config.json", "model.safetensors", "README.md", "log.jsonl"} - set(files):
        (out / name).unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = failing(capsys, out, *resume)
    assert code == 2 and err.startswith(f"error: --out {out} holds ") and "no checkpoint.pt" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_init_weights_are_never_the_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "weights"
    make_network_folder(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = failing(capsys, out, "--init-weights", str(out))
    assert code == 2 and "is the --init-weights folder" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_log_that_is_not_the_meta_trainers_is_named_not_parsed_into_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    meta_train(out, "--iterations", "2")
    (out / "log.jsonl").write_text('{"iteration": 0}\nnot json\n')
    code, err = failing(capsys, out, "--iterations", "4", "--resume")
    assert code == 2 and f"{out / 'log.jsonl'}: line 2 is not a record of this meta-trainer's log" in err, err
    assert (out / "log.jsonl").read_text() == '{"iteration": 0}\nnot json\n'


class Killed(Exception):
    """Stands for a SIGKILL at a chosen moment of an in-process run."""


def test_every_folder_a_run_wrote_to_holds_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint comes first, so a run stopped before its first validation ends still resumes with --resume."""
    import torch_lstm_optim.meta.train as meta_train_module

    out, validate = tmp_path / "run", meta_train_module.validate

    def killed(*args: Any, **kwargs: Any) -> float:
        assert (out / "checkpoint.pt").exists() and not (out / "model.safetensors").exists()
        raise Killed

    monkeypatch.setattr(meta_train_module, "validate", killed)
    with pytest.raises(Killed):
        meta_train(out, "--iterations", "2")
    monkeypatch.setattr(meta_train_module, "validate", validate)
    meta_train(out, "--iterations", "2", "--resume")
    meta_train(tmp_path / "reference", "--iterations", "2")
    assert records(out) == records(tmp_path / "reference")


def make_network_folder(folder: Path) -> None:
    """A weights folder as a user keeps one: config, weights and a card, not made by a run in this folder."""
    from conftest import make_network

    make_network().save_pretrained(folder)
    (folder / "README.md").write_text("my card\n")


def test_resume_without_a_checkpoint_says_it_starts_a_new_run(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "typo"
    meta_train(out, "--iterations", "2", "--resume")
    assert f"--resume: no checkpoint in {out}: starting a new run" in capsys.readouterr().err
    meta_train(out, "--iterations", "4", "--resume")
    assert "no checkpoint" not in capsys.readouterr().err
