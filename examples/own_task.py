"""Meta-train on your own problems: fine-tune a learned optimizer for one family of problems, then use it.

    python examples/own_task.py                          # fine-tune, evaluate, use: 4-6 minutes on a CPU core
    python examples/own_task.py --quick                  # seconds: every stage runs, the numbers mean nothing
    python examples/own_task.py --init-weights WEIGHTS   # start from other weights: a name, a folder or a hub id

1. The family, :class:`TeacherMLPs`: each problem is a fresh data set (targets made by a random "teacher" network)
   and a small student MLP to fit to it with minibatches, as a user who trains the same model on new data every
   day would. Copy this class and make it yours: the task interface is documented in ``torch_lstm_optim.meta.tasks``.
2. Fine-tune the starting weights on ``train`` problems of the family (``torch_lstm_optim.meta_train``, the same
   code as its command line). Without ``--init-weights`` the start is a fresh scale-free network, which IS Adam at
   learning rate 0.03 until meta-training changes it.
3. Evaluate on held-out ``test`` problems: the fine-tuned weights, the starting weights, and Adam with its learning
   rate tuned on ``val`` problems.
4. Use the result like any ``torch.optim`` optimizer: ``LSTMOptimizer(model.parameters(), weights=out_dir)``.

The task works from the command line too (run from the repository root, so that ``own_task`` is importable):

    PYTHONPATH=examples python -m torch_lstm_optim.meta_train --task own_task:TeacherMLPs --task-arg hidden=32 ...
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, NetworkConfig, load_network
from torch_lstm_optim.evaluation.evaluate import BASELINES, LR_GRID, evaluate, table
from torch_lstm_optim.meta.outputs import machine_description
from torch_lstm_optim.meta.tasks import Forward, Problem, make_task, module_problem, step_generator
from torch_lstm_optim.meta.train import main as meta_train

# A fresh network of this config starts as Adam's step at learning rate 0.03 (see NetworkConfig).
SCALE_FREE = dict(preprocessing="scale_free", log_rms_feature=True, output="direction_magnitude", output_scale=0.03)
START = "start (not fine-tuned)"


@dataclass
class TeacherMLPs:
    """Fit a ``inputs -> hidden -> 1`` tanh MLP to ``points`` samples of a random tanh teacher of ``teacher_hidden``
    units (targets standardised), by mean squared error on minibatches of ``batch_size``.

    It defines ``sample(seed)`` with no split: the library keeps ``train``, ``val`` and ``test`` problems apart by
    seed (``torch_lstm_optim.meta.tasks.split_seed``). A task with a fixed data set would take ``sample(seed, split)``.
    """

    inputs: int = 4
    hidden: int = 16
    teacher_hidden: int = 32
    points: int = 256
    batch_size: int = 32
    name: str = "teacher-mlps"

    def data(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """A data set: inputs ``(points, inputs)`` ~ N(0, 1), targets ``(points, 1)`` from a fresh teacher."""
        x = torch.randn(self.points, self.inputs, generator=gen)
        w1 = torch.randn(self.inputs, self.teacher_hidden, generator=gen) * 2 / self.inputs ** 0.5
        y = torch.tanh(x @ w1) @ torch.randn(self.teacher_hidden, 1, generator=gen)
        return x, (y - y.mean()) / y.std()

    def student(self, gen: torch.Generator) -> nn.Module:
        """The model to train, with PyTorch's default initialisation (bound ``fan_in ** -0.5``) drawn from ``gen``."""
        model = nn.Sequential(nn.Linear(self.inputs, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))
        with torch.no_grad():
            for layer in (model[0], model[2]):
                bound = layer.in_features ** -0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
        return model

    def sample(self, seed: int) -> Problem:
        """Problem ``seed``: its data, its student, its minibatches (fixed by ``seed`` and the step)."""
        gen = torch.Generator().manual_seed(seed)
        x, y = self.data(gen)

        def batch_loss(forward: Forward, step: int) -> Tensor:
            index = torch.randint(self.points, (self.batch_size,), generator=step_generator(seed, step))
            return F.mse_loss(forward(x[index]), y[index])

        return module_problem(self.student(gen), batch_loss, eval_loss=lambda forward: F.mse_loss(forward(x), y))


def fine_tune(args: argparse.Namespace, start: str) -> None:
    """Meta-train from the weights ``start`` on the family; the best weights (on ``val`` problems) go to ``--out``.

    Through the meta-trainer's command-line entry point, so the model card records a command anyone can rerun.
    """
    flags = {"--task": "own_task:TeacherMLPs", "--init-weights": start, "--out": args.out,
             "--iterations": args.iterations, "--horizon": args.steps, "--truncation": args.steps // 2,
             "--meta-batch": args.meta_batch, "--val-problems": args.val_problems, "--eval-every": args.eval_every,
             "--objective": "log", "--meta-lr": 1e-3, "--head-lr": 1e-2, "--threads": args.threads,
             "--seed": args.seed}
    meta_train([str(item) for pair in flags.items() for item in pair] + ["--no-compile"]
               + (["--resume"] if args.resume else []))


def compare(args: argparse.Namespace, start: CoordinatewiseLSTM) -> dict[str, Any]:
    """Fine-tuned weights ("learned") vs Adam with its learning rate tuned on ``val`` problems vs the starting
    weights, on the same ``test`` problems with the same minibatches."""
    task = make_task("own_task:TeacherMLPs")  # checked like any task, and split by seed
    baselines = {"adam": BASELINES["adam"], START: lambda params, lr: LSTMOptimizer(params, weights=start, lr=lr)}
    return evaluate(task, load_network(args.out), steps=args.steps, runs=args.runs, tune_runs=args.tune_runs,
                    baselines=baselines, grid=(0.01, 0.1) if args.quick else LR_GRID, lrs={START: 1.0})


def use(out: str, task: TeacherMLPs, steps: int) -> list[float]:
    """A normal training loop on a new data set of the family, with the fine-tuned optimizer."""
    gen = torch.Generator().manual_seed(12345)
    x, y = task.data(gen)
    model = task.student(gen)
    optimizer = LSTMOptimizer(model.parameters(), weights=out)
    losses = []
    for step in range(steps):
        index = torch.randint(len(x), (task.batch_size,), generator=gen)
        optimizer.zero_grad()
        loss = F.mse_loss(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        print(f"trained a new model with LSTMOptimizer(weights={out!r}): minibatch loss {losses[0]:.4f} -> "
              f"{losses[-1]:.4f}, loss on all its data {F.mse_loss(model(x), y).item():.4f}")
    return losses


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune, evaluate (printed, and written to ``OUT/comparison.json``), use; returns the evaluation."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/own-task", help="folder of the fine-tuned weights")
    parser.add_argument("--init-weights", default=None,
                        help="starting weights: bundled name, folder or hub id (default: a fresh scale-free network, "
                             "saved to OUT/start)")
    parser.add_argument("--iterations", type=int, default=200, help="meta-iterations of fine-tuning")
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps per problem (even)")
    parser.add_argument("--meta-batch", type=int, default=8, help="problems per meta-iteration")
    parser.add_argument("--val-problems", type=int, default=32, help="problems that pick the best weights")
    parser.add_argument("--eval-every", type=int, default=20, help="meta-iterations between validations")
    parser.add_argument("--runs", type=int, default=50, help="held-out test problems per optimizer")
    parser.add_argument("--tune-runs", type=int, default=8, help="val problems per learning rate tuning Adam")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the meta-training problems")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning in OUT")
    parser.add_argument("--quick", action="store_true", help="a few seconds: check that every stage runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.steps, args.meta_batch, args.val_problems, args.eval_every = 2, 6, 2, 2, 1
        args.runs, args.tune_runs = 2, 1
    torch.set_num_threads(args.threads)
    started = time.time()

    start = args.init_weights
    if start is None:
        start = str(Path(args.out) / "start")
        torch.manual_seed(args.seed)
        CoordinatewiseLSTM(NetworkConfig(**SCALE_FREE)).save_pretrained(start)
    fine_tune(args, start)
    result = compare(args, load_network(start))
    result.update(wall_seconds=time.time() - started, machine=machine_description(), start=start)
    print(table(result))
    print(f"total wall time {result['wall_seconds'] / 60:.1f} min on {result['machine']}")
    (Path(args.out) / "comparison.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    use(args.out, TeacherMLPs(), args.steps)
    return result


if __name__ == "__main__":
    main()
