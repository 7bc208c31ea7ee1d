"""What a user pays end to end: a real model trained with ``LSTMOptimizer``, Adam and Adadelta, side by side in one run.

    python benchmarks/real_model.py                                 # MNIST CNN, 100 steps, real MNIST, 1 thread
    python benchmarks/real_model.py --steps 314                     # 2 epochs over the 10,000 digits of ../shared/data
    python benchmarks/real_model.py --model resnet18                # step cost only, random 3x32x32 data
    python benchmarks/real_model.py --fake-data --steps 3           # random tensors of MNIST's shape (no files)

``--model mnist-cnn`` is the classic network of pytorch/examples' ``mnist/main.py`` (conv 32 3x3, conv 64 3x3,
max-pool 2, dropout 0.25, fc 9216 -> 128, dropout 0.5, fc 128 -> 10, log-softmax; 1,199,882 parameters) at batch
64 on real MNIST (``--data-dir``, normalised with mean 0.1307 and std 0.3081 as there), for ``--steps`` steps with
no learning-rate schedule. The training set is read once into memory, so data loading is not timed; an epoch is a
fresh seeded permutation cut into batches (the last one short, as a ``DataLoader``'s). After training, each model is
scored on the test set (``--test-size`` digits, all 10,000 by default): mean NLL loss and accuracy.
``--model resnet18`` is ``torchvision.models.resnet18(num_classes=10)`` (11.2M parameters) on random 3x32x32 images
and labels (batch ``--batch-size``, 16 by default): step cost only, no test score.

The contenders (``--optimizers``): ``lstm`` = ``LSTMOptimizer(model.parameters())`` with the default weights
(or ``--weights``), ``adam`` = ``torch.optim.Adam(lr=1e-3)``, ``adadelta`` = ``torch.optim.Adadelta(lr=1.0)``
(pytorch/examples' optimizer), each with torch's defaults otherwise; on request also ``lstm+compile``, the first with
``compile=True`` (its first step compiles, and that time counts). Every contender gets its own copy of the same
initial model and sees the same batches in the same order; each also has its own copy of the RNG state, so its
dropout masks are the ones it would draw alone. The contenders take turns, one training step each per round, in a
rotating order, so that noise from other processes hits all of them alike.

A training step is timed in two parts: ``fwd+bwd`` (``zero_grad``, forward, loss, backward) and ``optimizer.step()``.
Reported per contender: mean wall time per step (the sum of both parts over all steps, the first step and its lazy
optimizer state included, over the number of steps), the mean of each part, the median of ``optimizer.step()``
(without the first step's weight: the cost of a step once running), the optimizer's share of the step, the
CPU time of this process per step (``time.process_time``; wall time also counts time slices of other processes),
and the ratios to Adam in the same run: of the whole step and of ``optimizer.step()`` alone. Then the mean training
loss of the last 10% of steps, the test loss and the test accuracy, and the size of steps 1, 5 and 10 per
parameter (the rms of the update over the rms of the parameter: whether the first steps throw a layer off).
``--json`` (``results.json`` by default) gets everything, with the command, machine, thread count and torch version.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_lstm_optim import LSTMOptimizer
from torch_lstm_optim.meta.outputs import machine_description

ROOT = Path(__file__).resolve().parent.parent
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FAKE_TRAIN_SIZE = 1000  # digits of --fake-data's training set
SIZES_AT = (1, 5, 10)  # the steps whose size per parameter is recorded (the first ones decide whether a net trains)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "lstm": lambda params, weights: LSTMOptimizer(params, weights),
    "lstm+compile": lambda params, weights: LSTMOptimizer(params, weights, compile=True),
    "adam": lambda params, weights: torch.optim.Adam(params, lr=1e-3),
    "adadelta": lambda params, weights: torch.optim.Adadelta(params, lr=1.0),
}
DEFAULTS = {"mnist-cnn": {"steps": 100, "batch_size": 64}, "resnet18": {"steps": 10, "batch_size": 16}}


class MnistNet(nn.Module):
    """pytorch/examples' ``mnist/main.py`` network, layer for layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def build_model(name: str) -> nn.Module:
    if name == "mnist-cnn":
        return MnistNet()
    from torchvision.models import resnet18

    return resnet18(num_classes=10)


def mnist_tensors(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train images (N, 1, 28, 28) normalised, train labels, test images, test labels)``; random tensors of
    MNIST's shape and range with ``--fake-data``."""
    if args.fake_data:
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.rand(FAKE_TRAIN_SIZE + args.test_size, 784, generator=generator)
        labels = torch.randint(10, (len(images),), generator=generator)
        train_x, train_y = images[:FAKE_TRAIN_SIZE], labels[:FAKE_TRAIN_SIZE]
        test_x, test_y = images[FAKE_TRAIN_SIZE:], labels[FAKE_TRAIN_SIZE:]
    else:
        from torch_lstm_optim.meta.tasks.mnist import load_mnist

        train_x, train_y = load_mnist(str(args.data_dir), True, args.download)
        test_x, test_y = load_mnist(str(args.data_dir), False, args.download)
        test_x, test_y = test_x[:args.test_size], test_y[:args.test_size]

    def prepare(images: Tensor) -> Tensor:
        return ((images - MNIST_MEAN) / MNIST_STD).view(-1, 1, 28, 28)

    return prepare(train_x), train_y, prepare(test_x), test_y


def batches(args: argparse.Namespace, train: tuple[Tensor, Tensor] | None) -> Iterator[tuple[Tensor, Tensor]]:
    """The ``--steps`` training batches: epochs of seeded permutations of ``train``, or random 3x32x32 images."""
    generator = torch.Generator().manual_seed(args.seed)
    if train is None:
        for _ in range(args.steps):
            yield (torch.randn(args.batch_size, 3, 32, 32, generator=generator),
                   torch.randint(10, (args.batch_size,), generator=generator))
        return
    images, labels = train
    step = 0
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), args.batch_size):
            if step == args.steps:
                return
            index = order[start:start + args.batch_size]
            yield images[index], labels[index]
            step += 1


class Contender:
    """One optimizer with its own model and RNG state, and the timings of its steps."""

    def __init__(self, name: str, model: nn.Module, weights: str | None, rng: Tensor) -> None:
        self.name, self.model = name, model
        self.optimizer = OPTIMIZERS[name](model.parameters(), weights)
        self.rng = rng.clone()  # taken before any optimizer was built: building a network draws from the RNG
        self.forward_backward: list[float] = []
        self.step: list[float] = []
        self.cpu: list[float] = []
        self.losses: list[float] = []
        # at the steps of SIZES_AT, per parameter: rms of the update over the parameter's rms
        self.step_sizes: dict[int, dict[str, float]] = {}

    def train_step(self, x: Tensor, y: Tensor) -> None:
        torch.random.set_rng_state(self.rng)  # dropout draws as if this contender ran alone
        number = len(self.step) + 1
        before = [p.detach().clone() for p in self.model.parameters()] if number in SIZES_AT else None  # not timed
        cpu, start = time.process_time(), time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = F.nll_loss(out, y) if isinstance(self.model, MnistNet) else F.cross_entropy(out, y)
        loss.backward()
        middle = time.perf_counter()
        self.optimizer.step()
        end = time.perf_counter()
        if before is not None:
            self.step_sizes[number] = {name: float(_rms(p.detach() - old) / _rms(old))
                                       for (name, p), old in zip(self.model.named_parameters(), before)}
        self.cpu.append(time.process_time() - cpu)
        self.forward_backward.append(middle - start)
        self.step.append(end - middle)
        self.losses.append(loss.item())
        self.rng = torch.random.get_rng_state()

    @torch.no_grad()
    def test(self, images: Tensor, labels: Tensor, batch: int = 1000) -> tuple[float, float]:
        """Mean NLL loss and accuracy on ``images``."""
        self.model.eval()
        total, correct = 0.0, 0
        for start in range(0, len(images), batch):
            out = self.model(images[start:start + batch])
            total += F.nll_loss(out, labels[start:start + batch], reduction="sum").item()
            correct += int((out.argmax(1) == labels[start:start + batch]).sum())
        self.model.train()
        return total / len(images), correct / len(images)


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(args.seed)
    reference = build_model(args.model)
    numel = sum(p.numel() for p in reference.parameters())
    test = None
    if args.model == "mnist-cnn":
        train_x, train_y, test_x, test_y = mnist_tensors(args)
        data, test = batches(args, (train_x, train_y)), (test_x, test_y)
    else:
        data = batches(args, None)
    torch.manual_seed(args.seed)  # every contender starts from the same RNG state (dropout)
    rng = torch.random.get_rng_state()
    contenders = [Contender(name, copy.deepcopy(reference), args.weights, rng) for name in args.optimizers]
    print(f"training {args.model} ({numel:,} parameters) for {args.steps} steps of batch {args.batch_size} with "
          f"{args.optimizers}, {torch.get_num_threads()} thread(s)", flush=True)
    started = time.perf_counter()
    for step, (x, y) in enumerate(data):
        shift = step % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender.train_step(x, y)
        if args.progress and (step + 1) % args.progress == 0:
            print(f"  step {step + 1}/{args.steps}, {time.perf_counter() - started:.0f} s, train loss "
                  + ", ".join(f"{c.name} {c.losses[-1]:.3f}" for c in contenders), flush=True)
    rows = []
    for contender in contenders:
        row: dict[str, object] = {
            "optimizer": contender.name, "steps": len(contender.step),
            "step_ms": 1e3 * (sum(contender.forward_backward) + sum(contender.step)) / len(contender.step),
            "forward_backward_ms": 1e3 * statistics.fmean(contender.forward_backward),
            "optimizer_step_ms": 1e3 * statistics.fmean(contender.step),
            "optimizer_step_median_ms": 1e3 * statistics.median(contender.step),
            "first_optimizer_step_ms": 1e3 * contender.step[0],
            "cpu_ms": 1e3 * statistics.fmean(contender.cpu),
            "train_loss_last_10pct": statistics.fmean(contender.losses[-max(1, len(contender.losses) // 10):]),
            "first_step_over_param_rms": contender.step_sizes[1],
            "step_over_param_rms": contender.step_sizes,
        }
        row["optimizer_share"] = row["optimizer_step_ms"] / row["step_ms"]
        if test is not None:
            row["test_loss"], row["test_accuracy"] = contender.test(*test)
        rows.append(row)
    if "adam" in args.optimizers:
        adam = next(row for row in rows if row["optimizer"] == "adam")
        for row in rows:
            row["step_x_adam"] = row["step_ms"] / adam["step_ms"]
            row["optimizer_step_x_adam"] = row["optimizer_step_ms"] / adam["optimizer_step_ms"]
    return {"model": args.model, "params": numel, "rows": rows, "wall_s": time.perf_counter() - started,
            "test_size": None if test is None else len(test[1])}


def _rms(t: Tensor) -> Tensor:
    return t.pow(2).mean().sqrt()


def print_table(report: dict[str, object]) -> None:
    """A markdown table, ready for docs/performance.md."""
    print(f"\n{report['model']} ({report['params']:,} parameters), {report['steps']} steps of batch "
          f"{report['batch_size']}{', fake data' if report['fake_data'] else ''}; {report['machine']}; "
          f"{report['threads']} thread(s); {report['date']}; {report['wall_s']:.0f} s in all\n")
    scored = report["test_size"] is not None
    print("| optimizer | ms/step | fwd+bwd ms | optimizer.step ms | median optimizer.step ms | optimizer share "
          "| CPU ms/step | step x Adam | optimizer.step x Adam | train loss (last 10%) |"
          + (" test loss | test accuracy |" if scored else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if scored else ""))
    for row in report["rows"]:
        ratios = (f"{row['step_x_adam']:.2f} | {row['optimizer_step_x_adam']:.1f}" if "step_x_adam" in row
                  else " | ")
        print(f"| {row['optimizer']} | {row['step_ms']:.1f} | {row['forward_backward_ms']:.1f} | "
              f"{row['optimizer_step_ms']:.1f} | {row['optimizer_step_median_ms']:.1f} | "
              f"{row['optimizer_share']:.0%} | {row['cpu_ms']:.1f} | {ratios} | {row['train_loss_last_10pct']:.4f} |"
              + (f" {row['test_loss']:.4f} | {row['test_accuracy']:.2%} |" if scored else ""))
    names = list(report["rows"][0]["first_step_over_param_rms"])
    print("\nThe size of steps 1, 5 and 10, per parameter: rms of the update over the rms of the parameter it moves\n")
    print("| optimizer | step | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names))
    for row in report["rows"]:
        for step, sizes in row["step_over_param_rms"].items():
            print(f"| {row['optimizer']} | {step} | " + " | ".join(f"{v:.2g}" for v in sizes.values()) + " |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(DEFAULTS), default="mnist-cnn",
                        help="mnist-cnn: pytorch/examples' MNIST net on MNIST; resnet18: step cost on random data")
    parser.add_argument("--steps", type=int,
                        help=f"training steps of every optimizer (default {DEFAULTS['mnist-cnn']['steps']} for "
                             f"mnist-cnn, {DEFAULTS['resnet18']['steps']} for resnet18; 157 steps are one epoch "
                             "of 10,000 digits at batch 64)")
    parser.add_argument("--batch-size", type=int, help="default 64 for mnist-cnn (as pytorch/examples), 16 for "
                        "resnet18")
    parser.add_argument("--optimizers", default="lstm,adam,adadelta",
                        help=f"comma-separated contenders, of {list(OPTIMIZERS)}")
    parser.add_argument("--weights", help="LSTMOptimizer's weights (bundled name, folder or hub id; default: the "
                        "default weights)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding MNIST/raw/ (default ../shared/data from the repository root)")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST if it is missing")
    parser.add_argument("--fake-data", action="store_true",
                        help=f"random tensors of MNIST's shape ({FAKE_TRAIN_SIZE} training digits) instead of MNIST")
    parser.add_argument("--test-size", type=int, default=10_000,
                        help="test digits scored after training (the first ones of the test set; default all)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the whole run")
    parser.add_argument("--seed", type=int, default=0, help="initial model, data order and dropout")
    parser.add_argument("--progress", type=int, default=25, help="print the training losses every N steps (0: never)")
    parser.add_argument("--json", type=Path, default=Path("results.json"), help="where to write the results")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.optimizers = args.optimizers.split(",")
    unknown = sorted(set(args.optimizers) - set(OPTIMIZERS))
    if unknown or len(set(args.optimizers)) != len(args.optimizers):
        parser.error(f"--optimizers: expected distinct names of {list(OPTIMIZERS)}, found {args.optimizers}")
    if min(args.steps, args.batch_size, args.test_size, args.threads) < 1:
        parser.error("--steps, --batch-size, --test-size and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join(["python benchmarks/real_model.py", *(sys.argv[1:] if argv is None else argv)])
    report: dict[str, object] = {
        "command": command, "machine": machine_description(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "date": datetime.date.today().isoformat(), "steps": args.steps,
        "batch_size": args.batch_size, "fake_data": args.fake_data, "seed": args.seed,
        "load_average_before": os.getloadavg()[0]}
    report.update(run(args))
    report["load_average_after"] = os.getloadavg()[0]
    print_table(report)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
