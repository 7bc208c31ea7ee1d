"""Evaluation: the learned optimizer against the paper's baselines, each with a tuned learning rate.

``python -m torch_lstm_optim.evaluate --task mnist-mlp --weights mnist-mlp --out results/mnist-mlp``

Every optimizer runs on the same held-out problems (``test`` split) with the same minibatches. Each baseline's
learning rate is the best of ``LR_GRID`` by mean final loss on separate tuning problems (``val`` split); the
learned optimizer runs untuned at ``lr=1``. Writes ``results.json`` and a plot like the paper's Figure 4.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..meta.outputs import check_out, command_line, machine_description, write_json
from ..meta.tasks import Problem, Task, TaskError, make_task
from ..meta.tasks.base import parse_task_args
from ..meta.unroll import Networks, param_labels
from ..network import CoordinatewiseLSTM
from ..optimizer import LSTMOptimizer
from ..weights import WeightsError, load_network

OptimizerFactory = Callable[[list[Tensor], float], torch.optim.Optimizer]
BASELINES: dict[str, OptimizerFactory] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "nag": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),  # weight decay 0.01, PyTorch's default
}
PAPER_BASELINES = ("sgd", "nag", "rmsprop", "adam")  # what the paper compares with: evaluate()'s default
LR_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 3))  # 1e-4 ... 10, half-decade steps
MAX_LR = 1e6  # the largest learning rate a baseline may be given: far above the grid, finite in float32
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # --state-dtype: the learned optimizer's state


@dataclass
class Run:
    """One optimisation run: ``curve[t]`` is ``f(theta_t)`` on minibatch ``t``; ``final`` the reporting loss;
    ``params`` the parameters it ended at, if asked for (``keep_params``)."""

    curve: list[float]
    final: float
    seconds: float
    params: dict[str, Tensor] | None = None


def run_optimizer(problem: Problem, make: Callable[[list[Tensor]], torch.optim.Optimizer], steps: int,
                  keep_params: bool = False) -> Run:
    """Optimise a fresh copy of ``problem``'s parameters for ``steps`` steps (a diverged run ends at ``inf``);
    with ``keep_params``, the run holds the parameters it ended at (e.g. the image of a neural-art problem).

    An optimizer with an ``eval()`` mode (schedule-free ones, whose training iterate is not the one to report) is
    switched to it before the final loss.
    """
    params = {k: v.detach().clone().requires_grad_() for k, v in problem.params.items()}
    optimizer = make(list(params.values()))
    curve: list[float] = []
    start = time.perf_counter()
    for t in range(steps + 1):
        loss = problem.loss(params, t)
        curve.append(loss.item())
        if not math.isfinite(curve[-1]):
            curve += [math.inf] * (steps - t)
            return Run(curve, math.inf, time.perf_counter() - start, _kept(params, keep_params))
        if t == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    if callable(getattr(optimizer, "eval", None)):
        optimizer.eval()
    with torch.no_grad():
        final = float(problem.final_loss(params))
    return Run(curve, final if math.isfinite(final) else math.inf, seconds, _kept(params, keep_params))


def _kept(params: dict[str, Tensor], keep: bool) -> dict[str, Tensor] | None:
    return {k: v.detach().clone() for k, v in params.items()} if keep else None


def run_many(task: Task, seeds: Iterable[int], split: str, make: Callable[[list[Tensor]], torch.optim.Optimizer],
             steps: int) -> list[Run]:
    return [run_optimizer(task.sample(seed, split), make, steps) for seed in seeds]


def tune_lr(task: Task, factory: OptimizerFactory, steps: int, seeds: Iterable[int],
            grid: Iterable[float] = LR_GRID, split: str = "val") -> tuple[float, dict[float, float]]:
    """The grid learning rate with the lowest mean final loss on ``split`` problems; and every lr's score."""
    seeds = list(seeds)
    scores = {lr: _mean([r.final for r in run_many(task, seeds, split, lambda p, lr=lr: factory(p, lr), steps)])
              for lr in grid}
    return min(scores, key=scores.get), scores


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Mean and standard error of the final loss and of the curve over runs; count of diverged runs."""
    finals = [r.final for r in runs]
    curves = torch.tensor([r.curve for r in runs], dtype=torch.float64)
    n = len(runs)
    se = (lambda x: (x.std(0) / math.sqrt(n)) if n > 1 else torch.zeros_like(x[0]))
    return {"final_mean": _mean(finals), "final_se": float(se(torch.tensor(finals, dtype=torch.float64))),
            "finals": finals,
            "curve_mean": curves.mean(0).tolist(), "curve_se": se(curves).tolist(),
            "diverged": sum(not math.isfinite(f) for f in finals), "seconds_per_run": _mean([r.seconds for r in runs])}


def learned_optimizer(network: Networks, problem: Problem, state_dtype: torch.dtype = torch.float32,
                      ) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
    """``LSTMOptimizer`` over ``problem``'s parameters (in their order): one network, or ``{class: network}`` with
    one param group per class of ``problem.param_classes`` (the paper's CIFAR-10 setup); its per-coordinate state
    kept in ``state_dtype``."""
    if isinstance(network, CoordinatewiseLSTM):
        return lambda params: LSTMOptimizer(params, weights=network, state_dtype=state_dtype)
    labels = param_labels([problem], network)
    return lambda params: LSTMOptimizer([{"params": [p for p, c in zip(params, labels) if c == label], "weights": net}
                                         for label, net in network.items() if label in labels],
                                        state_dtype=state_dtype)


def evaluate(task: Task, network: Networks, steps: int = 100, runs: int = 20, tune_runs: int = 5,
             baselines: Iterable[str] | dict[str, OptimizerFactory] = PAPER_BASELINES,
             grid: Iterable[float] = LR_GRID, lrs: dict[str, float] | None = None,
             state_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Learned optimizer vs tuned baselines on ``runs`` test problems; returns a JSON-able result dict.

    ``network`` is one network, or ``{class: network}`` for one network per parameter class.

    ``baselines`` names entries of :data:`BASELINES`, or maps names to factories ``(params, lr) -> optimizer`` of
    any others (e.g. other learned weights). ``lrs`` fixes baseline learning rates instead of tuning them (e.g. to
    reuse a tuning, or to run learned weights at their ``lr=1``). ``state_dtype`` is the learned optimizer's
    (``LSTMOptimizer(state_dtype=...)``); it is recorded as ``"state_dtype"``.
    """
    seeds = range(runs)
    problems = [task.sample(seed, "test") for seed in seeds]
    results: dict[str, Any] = {"learned": {"lr": 1.0, **summarise(
        [run_optimizer(pb, learned_optimizer(network, pb, state_dtype), steps) for pb in problems])}}
    factories = baselines if isinstance(baselines, dict) else {name: BASELINES[name] for name in baselines}
    for name, factory in factories.items():
        if lrs and name in lrs:
            lr, scores = lrs[name], {}
        else:
            lr, scores = tune_lr(task, factory, steps, range(tune_runs), grid)
        results[name] = {"lr": lr, "tuning_scores": {str(k): v for k, v in scores.items()},
                         **summarise(run_many(task, seeds, "test", lambda p: factory(p, lr), steps))}
    best = min(factories, key=lambda k: results[k]["final_mean"])
    learned = results["learned"]
    diff = torch.tensor(learned["finals"], dtype=torch.float64) - torch.tensor(results[best]["finals"],
                                                                               dtype=torch.float64)
    return {"task": task.name, "steps": steps, "runs": runs, "tune_runs": tune_runs, "lr_grid": list(grid),
            "state_dtype": str(state_dtype).removeprefix("torch."), "optimizers": results, "best_baseline": best,
            "ratio_to_best": _ratio(learned["final_mean"], results[best]["final_mean"]),
            "paired_diff_mean": float(diff.mean()), "paired_diff_se": float(diff.std() / math.sqrt(runs)),
            "beats_best_by_se": learned["final_mean"] + learned["final_se"]
            < results[best]["final_mean"] - results[best]["final_se"]}


def table(result: dict[str, Any]) -> str:
    """A markdown table of final losses, learned first, and the comparison with the best tuned baseline."""
    lines = [f"| optimizer | lr | mean loss at step {result['steps']} (± s.e., {result['runs']} runs) | diverged |",
             "|---|---|---|---|"]
    for name, r in result["optimizers"].items():
        lines.append(f"| {name} | {r['lr']:.3g} | {r['final_mean']:.4f} ± {r['final_se']:.4f} | {r['diverged']} |")
    verdict = "beats" if result["beats_best_by_se"] else "does not beat"
    lines.append(f"\nLearned / best tuned ({result['best_baseline']}): ratio {result['ratio_to_best']:.3f}; paired "
                 f"difference {result['paired_diff_mean']:+.4f} ± {result['paired_diff_se']:.4f} (s.e.); the learned "
                 f"optimizer {verdict} it by more than the standard errors of both means.")
    if result.get("features"):
        lines.append(f"Features: {result['features']}.")
    return "\n".join(lines)


def write_card_section(folder: Path, heading: str, body: str) -> None:
    """Put ``body`` under ``heading`` (e.g. ``"## Evaluation"``) in the weights folder's model card ``README.md``,
    replacing that section if the card has it and keeping every other section."""
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    before, found, after = text.partition(f"\n{heading}\n")
    _, next_heading, rest = after.partition("\n## ") if found else ("", "", "")
    text = f"{before.rstrip()}\n\n{heading}\n\n{body.strip()}\n" + (f"\n## {rest}" if next_heading else "")
    card.write_text(text, encoding="utf-8")


def tuning_text(result: dict[str, Any]) -> str:
    """How the baselines' learning rates were chosen: tuned on ``val`` problems, or fixed by ``lrs``
    (``--baseline-lrs``), which leaves a baseline without tuning scores."""
    baselines = [name for name in result["optimizers"] if name != "learned"]
    fixed = [name for name in baselines if not result["optimizers"][name]["tuning_scores"]]
    tuned = [name for name in baselines if name not in fixed]
    how = (f"tuned on {result['tune_runs']} `val` problems over {len(result['lr_grid'])} log-spaced values from "
           "1e-4 to 10")
    if not fixed:
        return f"baselines' learning rates {how}"
    if not tuned:
        return "baselines' learning rates fixed by `--baseline-lrs` (not tuned in this run)"
    return f"learning rates of {', '.join(tuned)} {how}; of {', '.join(fixed)} fixed by `--baseline-lrs`"


def update_card(folder: Path, result: dict[str, Any]) -> None:
    """Write the evaluation (command, machine, table) into the weights folder's model card, replacing an older one."""
    problems = f"`{result['task']}` {result['task_options'] or ''}, {result['steps']} steps"
    write_card_section(folder, EVAL_HEADING, f"""Held-out problems (`test` split) of {problems}; {tuning_text(result)}.
Measured with `{result['command']}` on {result['machine']} in {result['wall_seconds']:.0f} s.

{table(result)}""")


EVAL_HEADING = "## Evaluation"


def plot(result: dict[str, Any], path: Path) -> None:
    """Log-scale loss against steps: learned solid, baselines dashed (the paper's Figure 4); a ``"features"`` entry
    (which features a neural-art task used) goes under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in result["optimizers"].items():
        mean = torch.tensor(r["curve_mean"])
        se = torch.tensor(r["curve_se"])
        steps = range(len(mean))
        style = "-" if name == "learned" else "--"
        ax.plot(steps, mean, style, label=f"{name} (lr {r['lr']:.3g})" if name != "learned" else "LSTM (learned)")
        ax.fill_between(steps, (mean - se).clamp_min(1e-12), mean + se, alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if result.get("features"):
        ax.set_title(f"{result['task']}\n{result['features']}", fontsize=8)
    else:
        ax.set_title(result["task"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ratio(loss: float, reference: float) -> float:
    """``loss / reference``; a reference of exactly 0 (a baseline that solved every problem) gives 1 if ``loss`` is
    0 too, else ``inf``, instead of a ZeroDivisionError after the whole evaluation."""
    if reference == 0:
        return 1.0 if loss == 0 else math.inf
    return loss / reference


def _mean(values: list[float]) -> float:
    return math.inf if any(not math.isfinite(v) for v in values) else sum(values) / len(values)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m torch_lstm_optim.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist-mlp", help="task name or package.module:factory")
    parser.add_argument("--task-arg", action="append", default=[], help="task option key=value (repeatable)")
    parser.add_argument("--data-dir", default=None, help="data folder for tasks with data (e.g. ../shared/data)")
    parser.add_argument("--weights", action="append", default=[], help=(
        "bundled name, folder or hub id (default: the default); or CLASS=WEIGHTS, once per parameter class, for "
        "one network per class (as meta_train --param-classes writes them)"))
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps per run")
    parser.add_argument("--runs", type=int, default=20, help="test problems per optimizer")
    parser.add_argument("--tune-runs", type=int, default=5, help="val problems per learning rate when tuning")
    parser.add_argument("--out", required=True, help="output folder for results.json and the plot")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--state-dtype", choices=list(STATE_DTYPES), default="float32",
                        help="dtype of the learned optimizer's per-coordinate state (bfloat16 halves its memory)")
    parser.add_argument("--baseline-lrs", action="append", default=[], metavar="NAME=LR", help=(
        "fix a baseline's learning rate instead of tuning it, e.g. to reuse an earlier run's tuning: "
        f"NAME one of {', '.join(PAPER_BASELINES)} (repeatable)"))
    parser.add_argument("--suite", help="run a suite of held-out problems instead of one --task: 'generalization' "
                        "(its flags: python -m torch_lstm_optim.evaluate --suite generalization --help)")
    parser.add_argument("--update-card", action="store_true",
                        help="write the table into the model card (README.md) of the --weights folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a results.json in --out made by another command (refused otherwise)")
    args = parser.parse_args(argv)
    if args.suite is not None:  # python -m torch_lstm_optim.evaluate hands --suite to the suite before this parser
        parser.error("--suite runs through python -m torch_lstm_optim.evaluate (torch_lstm_optim.evaluation.suite)")
    if min(args.steps, args.runs, args.tune_runs, args.threads) < 1 or args.runs < 2:
        parser.error(f"--steps, --tune-runs and --threads must be >= 1 and --runs >= 2 (standard errors), found "
                     f"{args.steps}, {args.tune_runs}, {args.threads} and {args.runs}")
    torch.set_num_threads(args.threads)
    command = command_line("evaluate", argv)
    try:
        options = parse_task_args(args.task_arg)
        lrs = parse_baseline_lrs(args.baseline_lrs)
        task = make_task(args.task, data_dir=args.data_dir, splits=("val", "test"), **options)
        network = load_weights_arg(args.weights)
        if not isinstance(network, CoordinatewiseLSTM):
            param_labels([task.sample(0, "test")], network)  # every parameter has its class's network
        check_out(Path(args.out), command, args.overwrite)
        if args.update_card:
            card_folder(args.weights)
    except (ValueError, TaskError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    start = time.time()
    result = evaluate(task, network, args.steps, args.runs, args.tune_runs, lrs=lrs,
                      state_dtype=STATE_DTYPES[args.state_dtype])
    result.update(weights=" ".join(args.weights) or "default", task_options=options, wall_seconds=time.time() - start,
                  machine=machine_description(), command=command)
    if getattr(task, "features_text", None):  # which features a neural-art task used: in the plot's title
        result["features"] = task.features_text
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    plot(result, out / f"{task.name}.png")
    if args.update_card:
        update_card(card_folder(args.weights), result)
    print(table(result))
    print(f"ratio to best tuned baseline ({result['best_baseline']}): {result['ratio_to_best']:.3f}; "
          f"wall time {result['wall_seconds']:.0f} s")


def parse_baseline_lrs(items: list[str]) -> dict[str, float]:
    """``--baseline-lrs``: ``["adam=0.001", ...]`` -> ``{"adam": 0.001}``; ValueError names what is wrong."""
    lrs: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in PAPER_BASELINES:
            raise ValueError(f"--baseline-lrs expects NAME=LR with NAME one of {', '.join(PAPER_BASELINES)}; "
                             f"found {item!r}")
        if name in lrs:
            raise ValueError(f"--baseline-lrs names {name!r} twice")
        try:
            lr = float(value)
        except ValueError:
            lr = math.nan
        if not 0 < lr <= MAX_LR:
            raise ValueError(f"--baseline-lrs {item!r}: the learning rate must be a number in (0, {MAX_LR:g}]")
        lrs[name] = lr
    return lrs


def card_folder(weights: list[str] | str | None) -> Path:
    """The folder whose model card ``--update-card`` may write: ``--weights`` given as one existing folder path.

    A bundled name or the default would edit the installed package's own card, a hub id the download cache.
    """
    values = [weights] if isinstance(weights, str) else list(weights or [])
    if len(values) != 1 or "=" in values[0] or not Path(values[0]).is_dir():
        raise ValueError(f"--update-card needs --weights as the path of one weights folder, whose README.md it "
                         f"writes; found {values or 'the default'} (a bundled name would edit the installed "
                         "package, a hub id the download cache)")
    return Path(values[0])


def load_weights_arg(values: list[str]) -> Networks:
    """``--weights``: nothing (the default), one name/folder/hub id, or ``CLASS=WEIGHTS`` per parameter class."""
    if len(values) <= 1 and not any("=" in v for v in values):
        return load_network(values[0] if values else None)
    pairs = [v.partition("=") for v in values]
    if any(not sep or not label or not weights for label, sep, weights in pairs) or \
            len({label for label, _, _ in pairs}) != len(pairs):
        raise WeightsError(f"--weights: give one name/folder/hub id, or CLASS=WEIGHTS once per class; found "
                           f"{values}")
    return {label: load_network(weights) for label, _, weights in pairs}


if __name__ == "__main__":
    main()
