"""Meta-training speed: seconds per meta-iteration, and wall time until the learned optimizer first beats tuned Adam.

    python benchmarks/meta_train_speed.py --task quadratic --iterations 200
    python benchmarks/meta_train_speed.py --task mnist-mlp --data-dir ../shared/data --log pretrained/mnist-mlp
    python benchmarks/meta_train_speed.py --data-dir ../shared/data --log pretrained/generalist-v1

Tuned Adam is scored on exactly the validation problems the meta-trainer validates on (same seeds, same steps, same
score: mean final loss or mean log of final over initial loss; learning rate the best of the evaluation's grid).
With ``--log FOLDER`` no training runs: the ``log.jsonl`` of an earlier run (e.g. the one that produced shipped
weights) is read instead, so its own wall times are reported.
Any meta-trainer flag after ``--`` is passed through (e.g. ``-- --meta-batch 4 --objective log``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from torch_lstm_optim.evaluation.evaluate import BASELINES, LR_GRID, run_optimizer
from torch_lstm_optim.meta.outputs import machine_description
from torch_lstm_optim.meta.train import build_task, parse_args, train, validation_scores, validation_seeds
from torch_lstm_optim.meta.unroll import Unroll


def time_to_beat(log: list[dict], reference: float) -> dict | None:
    """The first validation record whose loss is below ``reference``, or ``None``."""
    return next((r for r in log if "val" in r and r["val"] < reference), None)


def adam_scores(config, task) -> dict[float, float]:
    """Adam's validation score at every learning rate of the grid, scored as ``meta_train.validate`` scores."""
    problems = [task.sample(seed, config.val_split) for seed in validation_seeds(config)]
    initial = Unroll.start(problems).final_losses()
    scores = {}
    for lr in LR_GRID:
        finals = torch.tensor([run_optimizer(pb, lambda p: BASELINES["adam"](p, lr), config.horizon).final
                               for pb in problems])
        value = validation_scores(finals, initial, config.val_metric).mean()
        scores[lr] = float(value) if torch.isfinite(finals).all() else float("inf")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="quadratic")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--iterations", type=int, default=200, help="meta-iterations of the fresh run")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log", default=None, help="read FOLDER/log.jsonl (and its config) instead of training")
    args, passthrough = parser.parse_known_args()
    passthrough = [a for a in passthrough if a != "--"]
    torch.set_num_threads(args.threads)
    if args.log:
        folder = Path(args.log)
        card_config = torch.load(folder / "checkpoint.pt", weights_only=True)["config"]
        flags = ["--task", card_config["task"], "--data-dir", args.data_dir, "--horizon", str(card_config["horizon"]),
                 "--val-problems", str(card_config["val_problems"]),
                 "--val-split", card_config.get("val_split", "val"),
                 "--val-metric", card_config.get("val_metric", "loss"), "--truncation", str(card_config["truncation"])]
        config, _ = parse_args(flags + sum((["--task-arg", a] for a in card_config["task_arg"]), []))
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    else:
        with tempfile.TemporaryDirectory(prefix="meta_speed_") as out:
            config, network_config = parse_args(["--task", args.task, "--data-dir", args.data_dir, "--iterations",
                                                 str(args.iterations), "--eval-every", str(args.eval_every),
                                                 "--threads", str(args.threads), "--out", out, *passthrough])
            train(config, network_config, "benchmark")
            log = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    task = build_task(config)
    scores = adam_scores(config, task)
    lr = min(scores, key=scores.get)
    reference = scores[lr]
    last = log[-1]
    beat = time_to_beat(log, reference)
    print(f"machine: {machine_description()}")
    print(f"task {config.task}: {last['iteration']} meta-iterations in {last['elapsed']:.0f} s = "
          f"{last['elapsed'] / last['iteration']:.2f} s per meta-iteration (validation included)")
    print(f"tuned Adam (lr {lr:.3g}) on the {config.val_problems} validation problems ({config.val_metric}): "
          f"{reference:.4f}; "
          f"best learned: {min(r['val'] for r in log if 'val' in r):.4f}")
    if beat:
        print(f"learned first beats tuned Adam at iteration {beat['iteration']}, after {beat['elapsed']:.0f} s "
              f"({beat['elapsed'] / 60:.1f} min) of meta-training")
    else:
        print("learned did not beat tuned Adam within this run")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
