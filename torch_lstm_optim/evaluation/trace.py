"""What an optimizer does to each tensor of one suite problem: the loss, each tensor's rms and each step's size.

``python -m torch_lstm_optim.evaluation.trace --problem attention-reverse --weights generalist --weights adam:0.01
--steps 100 --seeds 3 --at 1 10 30 100``

The suite says *that* a learned rule loses on a problem; this says *how*. A rule that strides where it should creep
shows it in the sizes: a LayerNorm gain shrinking from 1 to 0.3, or an embedding growing from rms 1 to 16, while the
loss stays put. For every contender (learned weights, or a baseline as ``NAME:LR`` with a name of
:data:`~torch_lstm_optim.evaluation.evaluate.BASELINES`) it runs the ``test`` problems of ``--seeds`` seeds and
prints, at each step of ``--at``, the mean reporting loss and per tensor the median over seeds of its rms and of its
last step's size relative to it (``rms(update) / rms(param before)``). ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..meta.outputs import command_line, machine_description, write_json
from ..meta.tasks import Problem, TaskError
from ..optimizer import LSTMOptimizer
from ..weights import WeightsError, load_network
from .evaluate import BASELINES
from .heldout import SUITE

Make = Callable[[list[Tensor]], torch.optim.Optimizer]


def rms(x: Tensor) -> float:
    return x.detach().double().pow(2).mean().sqrt().item()


def trace_run(problem: Problem, make: Make, at: list[int]) -> dict[str, Any]:
    """One run of ``max(at)`` steps: at each step ``t`` of ``at`` (after ``t`` updates) the reporting loss (the one
    the suite scores), each tensor's rms and the ``t``-th update's rms relative to the tensor's rms before it."""
    params = {k: v.detach().clone().requires_grad_() for k, v in problem.params.items()}
    optimizer = make(list(params.values()))
    record: dict[str, Any] = {"loss": [], "rms": {k: [] for k in params}, "step": {k: [] for k in params}}
    for t in range(1, max(at) + 1):
        before = {k: v.detach().clone() for k, v in params.items()}
        optimizer.zero_grad()
        problem.loss(params, t - 1).backward()
        optimizer.step()
        if t not in at:
            continue
        with torch.no_grad():
            record["loss"].append(float(problem.final_loss(params)))
        for k, v in params.items():
            record["rms"][k].append(rms(v))
            size = rms(before[k])
            record["step"][k].append(rms(v.detach() - before[k]) / size if size > 0 else math.inf)
    return record


def contender(spec: str) -> Make:
    """``NAME:LR`` for a baseline (``adam:0.01``), anything else for learned weights (bundled name, folder, hub)."""
    name, _, lr = spec.partition(":")
    if name in BASELINES and lr:
        try:
            rate = float(lr)
        except ValueError:
            raise WeightsError(f"{spec}: the learning rate {lr!r} is not a number") from None
        return lambda params: BASELINES[name](params, rate)
    network = load_network(spec)
    return lambda params: LSTMOptimizer(params, weights=network)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over seeds: the mean loss, and per tensor the median of rms and relative step, at each traced step."""
    columns = range(len(runs[0]["loss"]))
    return {"loss": [sum(r["loss"][i] for r in runs) / len(runs) for i in columns],
            **{key: {k: [statistics.median([r[key][k][i] for r in runs]) for i in columns] for k in runs[0][key]}
               for key in ("rms", "step")}}


def table(name: str, summary: dict[str, Any], at: list[int], initial: dict[str, float]) -> str:
    """One contender: a row per tensor, a column per traced step, cells ``rms (step/rms)``."""
    width = max(len(k) for k in summary["rms"])
    lines = [f"## {name}", f"{'step':<{width}}  {'start':>9}  " + "  ".join(f"{t:>17}" for t in at),
             f"{'loss':<{width}}  {'':>9}  " + "  ".join(f"{v:>17.4g}" for v in summary["loss"])]
    for k in summary["rms"]:
        cells = [f"{r:9.3g} ({s:5.2g})" for r, s in zip(summary["rms"][k], summary["step"][k])]
        lines.append(f"{k:<{width}}  {initial[k]:9.3g}  " + "  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The CLI; a bad problem, weights or learning rate stops with one ``error:`` line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m torch_lstm_optim.evaluation.trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", required=True, choices=sorted(SUITE), help="a problem of the suite")
    parser.add_argument("--weights", action="append", required=True,
                        help="learned weights (bundled name, folder or hub id) or a baseline as NAME:LR (repeatable)")
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="test problems (seeds 0 .. N-1)")
    parser.add_argument("--at", type=int, nargs="+", default=None,
                        help="steps to report (default: 1, 10, 30 and --steps)")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    at = sorted(set(args.at or [t for t in (1, 10, 30) if t < args.steps] + [args.steps]))
    if args.steps < 1 or args.seeds < 1 or args.threads < 1 or not 1 <= at[0] <= at[-1] <= args.steps:
        parser.error(f"--steps, --seeds and --threads must be >= 1 and --at within 1..--steps, found {at}")
    torch.set_num_threads(args.threads)
    try:
        makes = {spec: contender(spec) for spec in args.weights}
        problems = [SUITE[args.problem]().sample(seed, "test") for seed in range(args.seeds)]
    except (ValueError, TaskError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    initial = {k: statistics.median([rms(p.params[k]) for p in problems]) for k in problems[0].params}
    result = {"problem": args.problem, "at": at, "initial_rms": initial, "contenders": {}}
    for spec, make in makes.items():
        result["contenders"][spec] = summarise([trace_run(p, make, at) for p in problems])
        print(table(spec, result["contenders"][spec], at, initial), end="\n\n")
    if args.out:
        result.update(command=command_line("evaluation.trace", argv), machine=machine_description())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
