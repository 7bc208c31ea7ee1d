"""Learned weights against each other on many fresh problems of one task, paired.

``python -m torch_lstm_optim.compare --task mixture --data-dir ../shared/data --weights generalist --weights DIR
--steps 1000 --runs 48 --out results/compare``

Meta-training keeps the weights that score best on a few validation problems (16 for the generalist). On a mixture,
whose problems' log-loss reductions differ by orders of magnitude, a mean over 16 is noisy, and the best of many
checks is an optimistic pick. This runs every weight set on the same ``runs`` fresh problems (the task's ``test``
split: neither trained nor validated on) with the meta-trainer's validation score, and reports for each its mean, its
paired difference from the first weights with a standard error, the median difference and on how many problems it
does better (a few problems taken to near-zero losses can decide a mean of log-ratios alone). It compares
weights with weights; ``evaluate`` compares them with tuned baselines.

With ``--metric vs_adam`` each problem is scored as the suite scores a pair: the log of the final loss over that of
Adam tuned for the problem, so that a mixture's precision problems (log-ratios of -20) do not outvote its networks
(-1), and each weight set is also counted against tuned Adam (median and wins): a choice among checks in the
suite's terms on problems the suite does not hold.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..meta.outputs import check_out, command_line, machine_description, write_json
from ..meta.tasks import MAX_SEED, Problem, TaskError, make_task
from ..meta.tasks.base import parse_task_args
from ..meta.train import validation_scores
from ..meta.unroll import Unroll, advance
from ..network import CoordinatewiseLSTM
from ..weights import WeightsError, fingerprint, load_network
from .evaluate import run_optimizer


ADAM_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
VS_ADAM_FLOOR = 1e-12  # below this fraction of its initial loss a problem is solved: both sides count it as solved


def tuned_adam(problems: list[Problem], steps: int) -> Tensor:
    """Per problem, Adam's lowest final loss over the learning rates of :data:`ADAM_GRID`: a reference tuned for each
    problem on its own (``inf`` where every rate diverged)."""
    return torch.tensor([min(run_optimizer(problem, lambda params: torch.optim.Adam(params, lr=lr), steps).final
                             for lr in ADAM_GRID) for problem in problems], dtype=torch.float64)


def scores(network: CoordinatewiseLSTM, problems: list[Problem], steps: int, metric: str,
           reference: Tensor | None = None) -> Tensor:
    """Per-problem scores of ``network`` run ``steps`` steps on ``problems`` (lower is better): the final loss, or
    for ``"log_ratio"`` the log of final over initial loss, as meta-training validates, or for ``"vs_adam"`` the
    log of its final loss over ``reference``'s (:func:`tuned_adam`), each floored at ``VS_ADAM_FLOOR`` times the
    initial loss: below 0 it beats Adam tuned for that problem, as the suite counts a win; ``inf`` where a run
    diverged."""
    run = Unroll.start(problems)
    initial = run.final_losses()
    with torch.no_grad():
        advance(network, run, steps)
    finals = run.final_losses()
    if metric == "vs_adam":
        floor = VS_ADAM_FLOOR * initial.double()
        result = finals.double().maximum(floor).log() - reference.maximum(floor).log()
    else:
        result = validation_scores(finals, initial, metric)
    return torch.where(torch.isfinite(result), result, torch.full_like(result, math.inf))


def compare(networks: dict[str, CoordinatewiseLSTM], problems: list[Problem], steps: int,
            metric: str = "log_ratio") -> dict[str, Any]:
    """Every network on the same ``problems``; the first named is the reference of the paired differences (with
    ``metric="vs_adam"``, each is also counted against tuned Adam: ``beats_adam_on``)."""
    reference = tuned_adam(problems, steps) if metric == "vs_adam" else None
    per_problem = {name: scores(net, problems, steps, metric, reference).double() for name, net in networks.items()}
    first = next(iter(per_problem.values()))
    n = len(problems)
    summary = {}
    for name, values in per_problem.items():
        diff = values - first
        summary[name] = {"mean": float(values.mean()), "median": float(values.median()),
                         "diff_mean": float(diff.mean()), "diff_median": float(diff.median()),
                         "diff_se": float(diff.std() / math.sqrt(n)) if n > 1 else 0.0,
                         "better_on": int((diff < 0).sum()), "worse_on": int((diff > 0).sum()),
                         "scores": values.tolist()}
        if reference is not None:
            summary[name]["beats_adam_on"] = int((values < 0).sum())
    result = {"steps": steps, "runs": n, "metric": metric, "weights": summary}
    if reference is not None:
        result.update(adam_grid=list(ADAM_GRID), adam_finals=reference.tolist())
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per weight set (against tuned Adam too, with the ``vs_adam`` metric)."""
    first = next(iter(result["weights"]))
    against_adam = result["metric"] == "vs_adam"
    rows = [f"| weights | mean {result['metric']} ({result['runs']} problems, {result['steps']} steps) | "
            f"paired difference from `{first}` (± s.e.) | median difference | better / worse on |"
            + " median vs tuned Adam | beats tuned Adam on |" * against_adam,
            "|---|---:|---:|---:|---:|" + "---:|---:|" * against_adam]
    for name, r in result["weights"].items():
        rows.append(f"| `{name}` | {r['mean']:.4f} | {r['diff_mean']:+.4f} ± {r['diff_se']:.4f} | "
                    f"{r['diff_median']:+.4f} | {r['better_on']} / {r['worse_on']} |"
                    + f" {r['median']:+.4f} | {r.get('beats_adam_on')} |" * against_adam)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """The CLI; a bad task, data or weights stops with one ``error:`` line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m torch_lstm_optim.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="task name or package.module:factory")
    parser.add_argument("--task-arg", action="append", default=[], help="task option key=value (repeatable)")
    parser.add_argument("--data-dir", default=None, help="data folder for tasks with data (e.g. ../shared/data)")
    parser.add_argument("--weights", action="append", required=True,
                        help="bundled name, folder or hub id (repeat: two or more; the first is the reference)")
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps per problem")
    parser.add_argument("--runs", type=int, default=48, help="problems (test split seeds FIRST .. FIRST+runs-1)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first problem's seed: a choice made on seeds 0-47 is confirmed on fresh ones")
    parser.add_argument("--metric", choices=("log_ratio", "loss", "vs_adam"), default="log_ratio",
                        help="score per problem: log of final over initial loss, final loss, or log of final loss "
                             "over that of Adam tuned for the problem (learning rates 1e-3 to 0.1: 5 more runs "
                             "per problem), as the suite scores a pair")
    parser.add_argument("--out", required=True, help="output folder for results.json")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a results.json in --out made by another command (refused otherwise)")
    args = parser.parse_args(argv)
    if len(args.weights) < 2 or len(set(args.weights)) != len(args.weights):
        parser.error(f"--weights: give two or more different weights, found {args.weights}")
    if args.steps < 1 or args.runs < 1 or args.threads < 1 or not 0 <= args.first_seed < MAX_SEED:
        parser.error(f"--steps, --runs and --threads must be >= 1, --first-seed in [0, {MAX_SEED})")
    torch.set_num_threads(args.threads)
    command = command_line("compare", argv)
    try:
        check_out(Path(args.out), command, args.overwrite)
        task = make_task(args.task, data_dir=args.data_dir, splits=("test",), **parse_task_args(args.task_arg))
        networks = {w: load_network(w) for w in args.weights}
        twins = [w for i, w in enumerate(args.weights) if fingerprint(networks[w]) in
                 {fingerprint(networks[v]) for v in args.weights[:i]}]
        if twins:
            raise WeightsError(f"--weights {twins[0]} holds the same weights as one named before it: nothing "
                               "to compare")
        problems = [task.sample(seed, "test") for seed in range(args.first_seed, args.first_seed + args.runs)]
    except (ValueError, TaskError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    start = time.time()
    result = compare(networks, problems, args.steps, args.metric)
    result.update(task=args.task, task_arg=args.task_arg, first_seed=args.first_seed,
                  wall_seconds=round(time.time() - start, 1), machine=machine_description(), command=command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    print(table(result))
    print(f"wall time {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
