"""``benchmarks/step_cost.py`` runs end to end at a tiny size, and its FLOP count agrees with torch's counter."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from torch_lstm_optim import CoordinatewiseLSTM

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def step_cost() -> ModuleType:
    spec = importlib.util.spec_from_file_location("step_cost", BENCHMARKS / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["paper", "scale_free"])
def test_flop_count_matches_torch_for_the_matmuls(step_cost: ModuleType, name: str) -> None:
    """torch counts only matmuls; the analytic count is theirs plus the elementwise ops listed in its docstring."""
    config = step_cost.CONFIGS[name]
    network = CoordinatewiseLSTM(config)
    grad = torch.randn(1000)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network.step(grad, network.init_state(grad))
    h, f = config.hidden_size, config.num_features
    head_inputs = h + (f if config.output == "direction_magnitude" else 0)
    head_outputs = 1 if config.output == "linear" else 2
    matmuls = 8 * h * (f + h) + 8 * h * (2 * h) + 2 * head_inputs * head_outputs
    assert counter.get_total_flops() == 1000 * matmuls
    assert matmuls < step_cost.flops_per_coordinate(config) < 1.1 * matmuls


def test_benchmark_runs_and_writes_json(step_cost: ModuleType, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "step_cost.json"
    step_cost.main(["--sizes", "2k", "--repeats", "2", "--configs", "paper", "--json", str(out)])
    report = json.loads(out.read_text())
    (size,) = report["sizes"]
    rows = {row["optimizer"]: row for row in size["results"]}
    assert set(rows) == {"adam", "paper"} and report["threads"] == 1
    assert rows["adam"]["ratio_to_adam"] == 1.0 and rows["adam"]["state_bytes_per_param"] >= 8
    assert rows["paper"]["state_bytes_per_param"] >= 2 * 2 * 20 * 4  # h and c of 2 layers of 20, float32
    assert rows["paper"]["peak_extra_mb"] is not None and rows["paper"]["step_ms"] > 0
    # the bound adds the transcendentals' time to the roofline's, so it is a fraction below 1
    assert 0 < rows["paper"]["fused_bound"] < 1
    assert "| paper |" in capsys.readouterr().out


def test_meta_train_speed_scores_adam_like_the_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Reading a run's log: tuned Adam is scored with the run's validation metric (here log_ratio, negative)."""
    from torch_lstm_optim.meta.train import main as meta_train_main

    run = tmp_path / "run"
    meta_train_main(["--task", "quadratic", "--iterations", "2", "--meta-batch", "2", "--eval-every", "1",
                     "--horizon", "4", "--truncation", "2", "--val-problems", "3", "--val-metric", "log_ratio",
                     "--threads", "1", "--no-compile", "--hidden-size", "4", "--out", str(run)])
    spec = importlib.util.spec_from_file_location("meta_train_speed", BENCHMARKS / "meta_train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["meta_train_speed.py", "--log", str(run), "--threads", "1"])
    module.main()
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("tuned Adam"))
    assert "validation problems (log_ratio): -" in line and "task quadratic: 2 meta-iterations" in out
