"""evaluate --state-dtype reaches LSTMOptimizer; --baseline-lrs fixes learning rates instead of tuning them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_network

import torch_lstm_optim.evaluation.evaluate as evaluate_module
from torch_lstm_optim import LSTMOptimizer
from torch_lstm_optim.evaluate import main as evaluate_main

TINY = ["--task", "quadratic", "--task-arg", "dim=4", "--steps", "3", "--runs", "2", "--tune-runs", "1",
        "--threads", "1"]


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[LSTMOptimizer]:
    """Every LSTMOptimizer the evaluation builds, kept to look at its state after the run."""
    made: list[LSTMOptimizer] = []

    class Recording(LSTMOptimizer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(evaluate_module, "LSTMOptimizer", Recording)
    return made


@pytest.mark.parametrize("preprocessing", ["log_sign", "scale_free"])
@pytest.mark.parametrize("flag, dtype", [([], torch.float32), (["--state-dtype", "bfloat16"], torch.bfloat16)])
def test_state_dtype_reaches_the_optimizer(flag: list[str], dtype: torch.dtype, preprocessing: str,
                                           made: list[LSTMOptimizer], tmp_path: Path) -> None:
    weights, out = tmp_path / "weights", tmp_path / "out"
    make_network(preprocessing=preprocessing).save_pretrained(weights)
    evaluate_main([*TINY, "--weights", str(weights), *flag, "--out", str(out)])
    assert len(made) == 2  # one per test problem
    for optimizer in made:
        assert optimizer.state_dtype == dtype
        assert len(optimizer.state) == 1
        for state in optimizer.state.values():
            assert state["step"] == 3
            tensors = {k: v.dtype for k, v in state.items() if k != "step"}
            if preprocessing == "scale_free":
                assert tensors.pop("t") == torch.float32  # the step count stays float32 (bfloat16 counts to 256)
                assert tensors.pop("v") == (torch.float32 if dtype == torch.bfloat16 else dtype)  # EMA of g^2
            assert "h0" in tensors and set(tensors.values()) == {dtype}
    result = json.loads((out / "results.json").read_text())
    assert result["state_dtype"] == str(dtype).removeprefix("torch.")


def test_baseline_lrs_are_used_instead_of_tuning(weights_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate_main([*TINY, "--weights", str(weights_folder), "--baseline-lrs", "adam=0.5", "--baseline-lrs",
                   "sgd=3.1622776601683795", "--out", str(out)])
    optimizers = json.loads((out / "results.json").read_text())["optimizers"]
    assert (optimizers["adam"]["lr"], optimizers["adam"]["tuning_scores"]) == (0.5, {})
    assert (optimizers["sgd"]["lr"], optimizers["sgd"]["tuning_scores"]) == (3.1622776601683795, {})
    assert len(optimizers["nag"]["tuning_scores"]) == len(evaluate_module.LR_GRID)  # the others are tuned

    # The model card says which learning rates were tuned and which were fixed.
    evaluate_main([*TINY, "--weights", str(weights_folder), "--baseline-lrs", "adam=0.5", "--update-card", "--out",
                   str(tmp_path / "card")])
    card = (weights_folder / "README.md").read_text()
    assert "learning rates of sgd, nag, rmsprop tuned on 1 `val` problems" in card
    assert "of adam fixed by `--baseline-lrs`" in card
    lrs = [f"--baseline-lrs={name}=0.1" for name in ("sgd", "nag", "rmsprop", "adam")]
    evaluate_main([*TINY, "--weights", str(weights_folder), *lrs, "--update-card", "--out", str(tmp_path / "fixed")])
    assert "baselines' learning rates fixed by `--baseline-lrs` (not tuned in this run)" in (
        weights_folder / "README.md").read_text()


@pytest.mark.parametrize("bad, message", [
    (["--baseline-lrs", "adam"], "error: --baseline-lrs expects NAME=LR with NAME one of sgd, nag, rmsprop, adam"),
    (["--baseline-lrs", "lion=0.1"], "error: --baseline-lrs expects NAME=LR"),
    (["--baseline-lrs", "adam=fast"], "error: --baseline-lrs 'adam=fast': the learning rate must be"),
    (["--baseline-lrs", "adam=-1"], "error: --baseline-lrs 'adam=-1': the learning rate must be"),
    (["--baseline-lrs", "adam=nan"], "error: --baseline-lrs 'adam=nan': the learning rate must be"),
    (["--baseline-lrs", "adam=1e300"], "error: --baseline-lrs 'adam=1e300': the learning rate must be"),
    (["--baseline-lrs", "adam=1", "--baseline-lrs", "adam=2"], "error: --baseline-lrs names 'adam' twice"),
])
def test_bad_baseline_lrs_give_one_error_line(bad: list[str], message: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        evaluate_main([*TINY, *bad, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["float16", "bf16", "torch.bfloat16"])
def test_bad_state_dtype_is_an_argparse_error(value: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        evaluate_main([*TINY, "--state-dtype", value, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument --state-dtype: invalid choice: '{value}'" in err
    assert not (tmp_path / "out").exists()
