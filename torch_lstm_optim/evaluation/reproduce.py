"""Reproduce the paper's experiments with the bundled weights: ``python -m torch_lstm_optim.reproduce --out DIR``.

Each experiment of Andrychowicz et al. (2016) is one :class:`Experiment`, run through :func:`evaluate.evaluate`
(the learned optimizer untuned at ``lr=1`` on held-out ``test`` problems, SGD/NAG/RMSprop/Adam each at its best
grid learning rate on ``val`` problems). Writes ``DIR/results.json`` (every experiment's full result, or why it
was not run), one PNG per experiment (``DIR/<key>.png``, the paper's loss curves), and prints a table: the learned
optimizer's mean final loss, the best tuned baseline's, their ratio, and whether the paper's claim held.

The claim is "the learned optimizer beats the best tuned baseline by more than the standard errors of both means"
(``beats_best_by_se`` of :func:`evaluate.evaluate`) for every experiment but the ReLU net, where the paper reports
that the MNIST optimizer does *not* generalise: there the claim held if it does not beat it.

Experiments that cannot run here are rows saying why: CIFAR-10 without its data under ``--data-dir`` or without
bundled ``cifar10-conv`` weights; neural art (needs pretrained VGG features). Each finished experiment is also
written to ``DIR/<key>.json``; a rerun with the same settings reuses it, so an interrupted run resumes.
``--quick`` is a smoke run: few problems, steps and learning rates (under a minute with tiny data).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..meta.outputs import OutputError, check_out, command_line, machine_description, write_json
from ..meta.tasks import TaskError, make_task
from ..weights import WeightsError, bundled_names, fingerprint, load_network
from .evaluate import LR_GRID, evaluate, plot

QUICK = dict(steps_divisor=10, runs=2, tune_runs=1, grid=(LR_GRID[4], LR_GRID[6], LR_GRID[8]))  # lr 0.01, 0.1, 1
QUICK_TASK_OPTIONS = {"mnist-mlp": {"val_size": 100},
                      "cifar10-conv": {"val_size": 100, "eval_size": 100, "batch_size": 32}}


@dataclass(frozen=True)
class Experiment:
    """One row of the paper: a task with options, the weights that run on it, and the counts of the full run."""

    key: str
    title: str
    paper: str  # figure of the paper
    task: str = ""
    task_options: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    steps: int = 100
    runs: int = 20
    tune_runs: int = 5
    claim: str = "beats"  # "beats": the learned optimizer beats the best tuned baseline; "fails": it does not
    not_implemented: str = ""  # why, for an experiment this package does not implement


# Counts of the runs in results/ (README): 1000 quadratics tuned on 50, 30 MNIST problems, 20 per variation.
EXPERIMENTS = (
    Experiment("quadratic", "Quadratics", "Fig. 4 left", "quadratic", weights="quadratic",
               runs=1000, tune_runs=50),
    Experiment("mnist-mlp", "MNIST MLP", "Fig. 4 centre", "mnist-mlp", weights="mnist-mlp", runs=30),
    Experiment("mnist-steps200", "MNIST MLP, longer than trained", "Fig. 4 right", "mnist-mlp",
               weights="mnist-mlp", steps=200),
    Experiment("mnist-hidden40", "MNIST MLP, 40 hidden units", "Fig. 5 left", "mnist-mlp", {"hidden": (40,)},
               weights="mnist-mlp"),
    Experiment("mnist-layers2", "MNIST MLP, 2 hidden layers", "Fig. 5 centre", "mnist-mlp", {"hidden": (20, 20)},
               weights="mnist-mlp"),
    Experiment("mnist-relu", "MNIST MLP, ReLU", "Fig. 5 right", "mnist-mlp", {"activation": "relu"},
               weights="mnist-mlp", claim="fails"),
    Experiment("cifar10", "CIFAR-10 conv net", "Fig. 7 left", "cifar10-conv", weights="cifar10-conv"),
    Experiment("cifar5", "CIFAR-5 (labels 0-4)", "Fig. 7 centre", "cifar10-conv", {"classes": (0, 1, 2, 3, 4)},
               weights="cifar10-conv"),
    Experiment("cifar2", "CIFAR-2 (labels 0, 1)", "Fig. 7 right", "cifar10-conv", {"classes": (0, 1)},
               weights="cifar10-conv"),
    Experiment("neural-art", "Neural art", "Figs. 8-9",
               not_implemented="needs pretrained VGG features, which cannot be had offline here"),
)


def settings(experiment: Experiment, quick: bool) -> dict[str, Any]:
    """What :func:`evaluate.evaluate` is run with: the experiment's counts, or ``--quick``'s."""
    options = dict(experiment.task_options)
    if not quick:
        return dict(task_options=options, steps=experiment.steps, runs=experiment.runs,
                    tune_runs=experiment.tune_runs, grid=list(LR_GRID))
    options.update(QUICK_TASK_OPTIONS.get(experiment.task, {}))
    return dict(task_options=options, steps=max(1, experiment.steps // QUICK["steps_divisor"]), runs=QUICK["runs"],
                tune_runs=QUICK["tune_runs"], grid=list(QUICK["grid"]))


def not_run_reason(experiment: Experiment, data_dir: str) -> str:
    """Why ``experiment`` cannot run here, or ``""``: CIFAR-10 data or weights missing, or not implemented."""
    if experiment.not_implemented:
        return f"not implemented: {experiment.not_implemented}"
    reasons = []
    if experiment.task == "cifar10-conv" and not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        reasons.append(f"no CIFAR-10 data under {data_dir}")
    if experiment.weights not in bundled_names():
        reasons.append(f"no weights {experiment.weights!r} (bundled: {', '.join(bundled_names()) or 'none'})")
    return "not run: " + "; ".join(reasons) if reasons else ""


def bundled_fingerprint(name: str) -> str | None:
    """:func:`~torch_lstm_optim.weights.fingerprint` of the bundled weights ``name`` (``None`` if there are none by
    that name): a cached result stands only for the weights it was made with, not for whatever the name holds now."""
    return fingerprint(load_network(name)) if name in bundled_names() else None


def run_experiment(experiment: Experiment, data_dir: str, quick: bool) -> dict[str, Any]:
    """Run one experiment through :func:`evaluate.evaluate`; a row saying why if it cannot run."""
    row: dict[str, Any] = {"key": experiment.key, "title": experiment.title, "paper": experiment.paper,
                           "claim": experiment.claim, "experiment": asdict(experiment),
                           "settings": settings(experiment, quick)}
    reason = not_run_reason(experiment, data_dir)
    if reason:
        return {**row, "status": reason, "held": None}
    s = row["settings"]
    try:
        task = make_task(experiment.task, data_dir=data_dir, **s["task_options"])
        network = load_network(experiment.weights)
    except (TaskError, WeightsError) as error:
        return {**row, "status": f"not run: {error}", "held": None}
    start = time.time()
    result = evaluate(task, network, s["steps"], s["runs"], s["tune_runs"], grid=s["grid"])
    result.update(weights=experiment.weights, weights_sha256=fingerprint(network), task_options=s["task_options"],
                  wall_seconds=time.time() - start)
    beats = result["beats_best_by_se"]
    return {**row, "status": "run", "result": result, "held": beats if experiment.claim == "beats" else not beats}


def table(rows: list[dict[str, Any]]) -> str:
    """The summary: per experiment, learned vs best tuned baseline (mean final loss ± s.e.), ratio, claim held."""
    lines = ["| experiment (paper) | steps | learned (lr 1) | best tuned baseline | ratio | paper's claim | held |",
             "|---|---:|---|---|---:|---|---|"]
    for row in rows:
        name, steps = f"{row['title']} ({row['paper']})", row["settings"]["steps"]
        claim = ("learned beats tuned baselines" if row["claim"] == "beats"
                 else "learned fails (does not beat them)")
        if row["status"] != "run":
            lines.append(f"| {name} | | {row['status']} | | | {claim} | |")
            continue
        result = row["result"]
        learned, best = result["optimizers"]["learned"], result["optimizers"][result["best_baseline"]]
        lines.append(f"| {name} | {steps} | {learned['final_mean']:.4f} ± {learned['final_se']:.4f} | "
                     f"{result['best_baseline']} (lr {best['lr']:.3g}) {best['final_mean']:.4f} ± "
                     f"{best['final_se']:.4f} | {result['ratio_to_best']:.3f} | {claim} | "
                     f"{held_text(row)} |")
    return "\n".join(lines)


def held_text(row: dict[str, Any]) -> str:
    """The table's "held" cell; where the paper reports a failure and the learned optimizer wins, it says so."""
    if row["held"]:
        return "yes"
    return "no: it beats them, better than the paper" if row["claim"] == "fails" else "no"


def _read_cached(path: Path) -> dict[str, Any] | None:
    """An experiment's earlier result in ``path``, or None if there is none or it cannot be read (then it is run
    again and the file replaced: it is this tool's own cache, inside an ``--out`` that :func:`check_out` let in)."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        print(f"{path}: unreadable ({type(error).__name__}); running the experiment again", file=sys.stderr)
        return None
    return cached if isinstance(cached, dict) and isinstance(cached.get("result", {}), dict) else None


def reproduce(out: Path, data_dir: str, quick: bool = False, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the experiments (all, or the keys in ``only``) into ``out``; return their rows."""
    experiments = [e for e in EXPERIMENTS if not only or e.key in only]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, experiment in enumerate(experiments, start=1):
        cached_path = out / f"{experiment.key}.json"
        cached = _read_cached(cached_path)
        same = cached is not None and cached.get("status") == "run" and cached.get("experiment") == json.loads(
            json.dumps(asdict(experiment))) and cached.get("settings") == json.loads(
            json.dumps(settings(experiment, quick))) and cached["result"].get("weights_sha256") == bundled_fingerprint(
            experiment.weights)
        print(f"[{i}/{len(experiments)}] {experiment.key}: " + ("done before, reused" if same else "..."),
              file=sys.stderr, flush=True)
        row = cached if same else run_experiment(experiment, data_dir, quick)
        if row["status"] == "run":
            if not same:
                write_json(cached_path, row)
            plot({**row["result"], "task": f"{experiment.title} ({experiment.paper})"}, out / f"{experiment.key}.png")
            print(f"    ratio to the best tuned baseline {row['result']['ratio_to_best']:.3f}, "
                  f"{row['result']['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
        else:
            print(f"    {row['status']}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m torch_lstm_optim.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder for results.json, the plots and per-experiment "
                                                     "results (reused by a rerun with the same settings)")
    parser.add_argument("--data-dir", default="data",
                        help="folder holding MNIST/raw/ and cifar-10-batches-py/ (e.g. ../shared/data)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 test problems, 1 tuning problem, 3 learning rates, a tenth of the steps")
    parser.add_argument("--only", action="append", choices=[e.key for e in EXPERIMENTS], default=None,
                        help="run only this experiment (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a results.json in --out made by another command (refused otherwise)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, found {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    command = command_line("reproduce", argv)
    try:  # another run of this tool with the same --quick adds to the folder's results; anything else is refused
        check_out(out, command, args.overwrite, same=lambda previous: previous.get("quick") == args.quick and str(
            previous.get("command", "")).startswith(command_line("reproduce", [])))
    except OutputError as error:
        parser.exit(2, f"error: {error}\n")
    previous = {} if args.overwrite or not (out / "results.json").exists() else json.loads(
        (out / "results.json").read_text(encoding="utf-8"))
    kept = {row["key"]: row for row in previous.get("experiments", [])}
    rows = {**kept, **{row["key"]: row for row in reproduce(out, args.data_dir, args.quick, args.only)}}
    rows = [rows[e.key] for e in EXPERIMENTS if e.key in rows]  # the paper's order
    summary = {"command": command,
               "machine": machine_description(), "quick": args.quick, "data_dir": args.data_dir,
               "wall_seconds": time.time() - start, "experiments": rows}
    write_json(out / "results.json", summary)
    print(table(rows))
    print(f"wall time {summary['wall_seconds']:.0f} s; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
