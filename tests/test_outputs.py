"""Output folders: no tool silently replaces results, weights or model cards it did not make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_network

from torch_lstm_optim.evaluate import main as evaluate_main
from torch_lstm_optim.meta.outputs import OutputError, check_out, command_line
from torch_lstm_optim.weights import read_folder

TINY = ["--task", "quadratic", "--task-arg", "dim=3", "--steps", "3", "--runs", "2", "--tune-runs", "1",
        "--threads", "1"]


def run_evaluate(*argv: str) -> list[str]:
    argv = [*TINY, *argv]
    evaluate_main(argv)
    return argv


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run evaluate expecting it to stop with exit code 2 before any work; return its error line."""
    with pytest.raises(SystemExit) as stop:
        evaluate_main([*TINY, *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_results_of_another_command_are_kept_unless_overwrite_is_given(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    first = run_evaluate("--weights", "quadratic", "--out", str(out))
    before = (out / "results.json").read_bytes()
    assert json.loads(before)["command"] == command_line("evaluate", first)

    err = refused(capsys, "--weights", "generalist", "--out", str(out))
    assert f"--out {out}: holds the results of another command ({command_line('evaluate', first)})" in err
    assert (out / "results.json").read_bytes() == before

    run_evaluate("--weights", "quadratic", "--out", str(out))  # the same command again: a rerun replaces its own
    second = run_evaluate("--weights", "generalist", "--out", str(out), "--overwrite")
    recorded = json.loads((out / "results.json").read_text())
    assert recorded["weights"] == "generalist" and recorded["command"] == command_line("evaluate", second)
    assert "--overwrite" not in recorded["command"]


def test_unusable_out_folders_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert "is a file, not a folder" in refused(capsys, "--out", str(a_file))
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "results.json").write_text("{not json")
    assert "holds a results.json this tool cannot read" in refused(capsys, "--out", str(unreadable))
    assert a_file.read_text() == "mine" and (unreadable / "results.json").read_text() == "{not json"
    with pytest.raises(OutputError, match="is a file"):
        check_out(a_file, "any", overwrite=True)


def test_update_card_writes_only_a_weights_folder_given_by_path(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for weights in (["--weights", "quadratic"], []):
        err = refused(capsys, *weights, "--update-card", "--out", str(tmp_path / "card"))
        assert "--update-card needs --weights as the path of one weights folder" in err
    assert not (tmp_path / "card").exists()
    folder = tmp_path / "weights"
    make_network().save_pretrained(folder)
    run_evaluate("--weights", str(folder), "--update-card", "--out", str(tmp_path / "card"))
    assert "## Evaluation" in (folder / "README.md").read_text()
    read_folder(folder)


@pytest.mark.parametrize("bad, message", [
    (["--runs", "1"], "--runs >= 2"),
    (["--runs", "0"], "--runs >= 2"),
    (["--tune-runs", "0"], "--tune-runs and --threads must be >= 1"),
    (["--steps", "-5"], "--steps, --tune-runs and --threads must be >= 1"),
    (["--threads", "0"], "--steps, --tune-runs and --threads must be >= 1"),
])
def test_bad_counts_are_refused_by_the_parser(bad: list[str], message: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        evaluate_main([*TINY, *bad, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("item, message", [
    ("data_dir=/elsewhere", "--task-arg data_dir: not a task option (use --data-dir)"),
    ("splits=1", "--task-arg splits: not a task option"),
    ("dim", "--task-arg expects key=value"),
])
def test_bad_task_args_are_one_error_line(item: str, message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert message in refused(capsys, "--task-arg", item, "--out", str(tmp_path / "out"))
