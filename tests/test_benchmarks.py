"""``benchmarks/step_cost.py`` runs end to end at a tiny size, and its FLOP count agrees with torch's counter."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from torch_lstm_optim import CoordinatewiseLSTM, NetworkConfig

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def step_cost() -> ModuleType:
    spec = importlib.util.spec_from_file_location("step_cost", BENCHMARKS / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["paper", "scale_free", "momentum_mix", "momentum_mix_1x8"])
def test_flop_count_matches_torch_for_the_matmuls(step_cost: ModuleType, name: str) -> None:
    """torch counts only matmuls; the analytic count is theirs plus the elementwise ops listed in its docstring."""
    config = step_cost.CONFIGS[name]
    network = CoordinatewiseLSTM(config)
    grad = torch.randn(1000)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network.step(grad, network.init_state(grad))
    h, f = config.hidden_size, config.num_features
    head_inputs = h + (f if config.output != "linear" else 0)
    widths = [f] + [h] * (config.num_layers - 1)
    matmuls = sum(8 * h * (n + h) for n in widths) + 2 * head_inputs * config.num_outputs
    assert counter.get_total_flops() == 1000 * matmuls
    # the elementwise ops add O(H) to the matmuls' O(H^2): under 10% at 2 x 20, 21% at 1 x 8
    assert matmuls < step_cost.flops_per_coordinate(config) < (1.1 if config.hidden_size >= 20 else 1.25) * matmuls


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
    # the bound adds the transcendentals' time to the roofline's FLOP time, so it is a fraction of at most 1 (exactly 1
    # when the copy time dominates both, as it can on a loaded machine whose measured bandwidth drops)
    assert 0 < rows["paper"]["fused_bound"] <= 1
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


def load_benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_model_trains_all_three_on_fake_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The MNIST CNN with the default weights, Adam and Adadelta in one run, on random tensors of MNIST's shape."""
    real_model = load_benchmark("real_model")
    out = tmp_path / "results.json"
    real_model.main(["--fake-data", "--steps", "2", "--test-size", "50", "--json", str(out), "--progress", "0"])
    report = json.loads(out.read_text())
    rows = {row["optimizer"]: row for row in report["rows"]}
    assert set(rows) == {"lstm", "adam", "adadelta"} and report["params"] == 1_199_882
    assert report["threads"] == 1 and report["command"].startswith("python benchmarks/real_model.py --fake-data")
    assert rows["adam"]["step_x_adam"] == 1.0 and all(row["steps"] == 2 for row in rows.values())
    for row in rows.values():
        assert 0 < row["optimizer_share"] < 1 and 0 <= row["test_accuracy"] <= 1 and row["test_loss"] > 0
        assert row["step_ms"] == pytest.approx(row["forward_backward_ms"] + row["optimizer_step_ms"])
    assert "| lstm |" in capsys.readouterr().out


def test_real_model_contenders_see_the_same_data_and_dropout() -> None:
    """Each contender's RNG is its own: the same optimizer twice in one run trains to the same loss."""
    real_model = load_benchmark("real_model")
    args = real_model.parse_args(["--fake-data", "--steps", "3", "--optimizers", "adam", "--test-size", "1"])
    torch.manual_seed(0)
    model = real_model.build_model("mnist-cnn")
    rng = torch.random.get_rng_state()
    twins = [real_model.Contender("adam", copy.deepcopy(model), None, rng)]
    # a learned optimizer built between them draws from the RNG (its network's init): the twin's dropout is unchanged
    real_model.Contender("lstm", copy.deepcopy(model), "generalist-small", rng)
    twins.append(real_model.Contender("adam", copy.deepcopy(model), None, rng))
    images, labels, _, _ = real_model.mnist_tensors(args)
    for x, y in real_model.batches(args, (images, labels)):
        for twin in reversed(twins):  # interleaved, as in the benchmark
            twin.train_step(x, y)
    assert twins[0].losses == twins[1].losses and len(twins[0].losses) == 3


def test_real_model_resnet18_step_cost(tmp_path: Path) -> None:
    real_model = load_benchmark("real_model")
    report = real_model.main(["--model", "resnet18", "--steps", "1", "--batch-size", "2", "--optimizers",
                              "adam,adadelta", "--json", str(tmp_path / "r.json"), "--progress", "0"])
    assert report["params"] == 11_181_642 and report["test_size"] is None
    assert [row["optimizer"] for row in report["rows"]] == ["adam", "adadelta"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_step_says_it_needs_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    cuda_step = load_benchmark("cuda_step")
    with pytest.raises(SystemExit) as exit_info:
        cuda_step.main(["--sizes", "1M"])
    assert exit_info.value.code == 2
    assert "needs a CUDA device, and torch sees none" in capsys.readouterr().err


def test_step_variants_time_the_cells_and_the_chunk_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    """Every variant of the cell computes the rule within float32 rounding, except bfloat16 matmuls."""
    step_variants = load_benchmark("step_variants")
    report = step_variants.main(["--coordinates", "64", "--repeats", "4", "--warmup-steps", "2"])
    rows = report["rows"]
    assert rows["network"]["ratio"] == 1.0 and rows["network"]["max_relative_difference"] == 0.0
    assert all(row["max_relative_difference"] < 1e-6 for name, row in rows.items() if name != "bf16-matmul")
    assert ("bf16-matmul" in rows) == step_variants.cpu_has_bf16()
    report = step_variants.main(["--chunk-sizes", "512,2048", "--size", "5k", "--variants", "network,in-place",
                                 "--repeats", "4"])
    assert set(report["rows"]) == {"network 512", "network 2048", "in-place 512", "in-place 2048"}
    assert report["reference"] == "network 2048" and "| network 512 |" in capsys.readouterr().out


def test_frontier_joins_cost_and_suite_quality(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Each point's form is timed against Adam in one run, its quality read from its suite results.json."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # frontier imports step_cost as the script does
    frontier = load_benchmark("frontier")
    small = tmp_path / "small"
    CoordinatewiseLSTM(NetworkConfig(hidden_size=4, num_layers=1, preprocessing="scale_free",
                                     output="momentum_mix")).save_pretrained(small)
    points = []
    for label, weights, won in (("paper", "quadratic", 1), ("small", str(small), 3)):
        summary = {"won": won, "pairs": 28, "median_ratio": 1.5, "worst_ratio": 10.0, "worst_pair": "x@100",
                   "learned_diverged_in": [], "untuned_not_beaten_in": ["y@100"]}
        (tmp_path / f"{label}.json").write_text(json.dumps({"summary": summary, "command": "evaluate"}))
        points += ["--point", label, weights, str(tmp_path / f"{label}.json")]
    report = frontier.main([*points, "--size", "2k", "--repeats", "2", "--plot", str(tmp_path / "f.png"),
                            "--json", str(tmp_path / "f.json")])
    rows = {row["label"]: row for row in report["points"]}
    assert rows["paper"]["form"] == "2x20 log_sign/linear" and rows["small"]["form"] == "1x4 scale_free/momentum_mix"
    assert rows["small"]["won"] == 3 and rows["small"]["untuned_beaten"] == 27
    assert all(row["cost_x_adam"] > 0 and row["cost_x_adam_compiled"] is None for row in rows.values())
    assert (tmp_path / "f.png").stat().st_size > 0 and json.loads((tmp_path / "f.json").read_text())["points"]
    assert "| small | 1x4 scale_free/momentum_mix |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="bad.json: not the results.json of an `evaluate --suite` run"):
        frontier.main(["--point", "x", "mnist-mlp", str(tmp_path / "bad.json"), "--size", "2k"])
