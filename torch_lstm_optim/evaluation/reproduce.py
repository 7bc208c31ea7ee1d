"""Reproduce the paper's experiments with the bundled weights: ``python -m torch_lstm_optim.reproduce --out DIR``.

Each experiment of Andrychowicz et al. (2016) is one :class:`Experiment`, run through :func:`evaluate.evaluate`
(the learned optimizer untuned at ``lr=1`` on held-out ``test`` problems, SGD/NAG/RMSprop/Adam each at its best
grid learning rate on ``val`` problems). Writes ``DIR/results.json`` (every experiment's full result, or why it
was not run), one PNG per experiment (``DIR/<key>.png``, the paper's loss curves), and prints a table: the learned
optimizer's mean final loss, the best tuned baseline's, their ratio, and whether the paper's claim held.

The claim is "the learned optimizer beats the best tuned baseline by more than the standard errors of both means"
(``beats_best_by_se`` of :func:`evaluate.evaluate`) for every experiment but the ReLU net, where the paper reports
that the MNIST optimizer does *not* generalise: there the claim held if it does not beat it.

Neural art (Figs. 8 and 9) has no bundled weights: its experiments meta-train them first, with the project's
meta-trainer, into ``DIR/<weights>`` (a rerun resumes or reuses that run), then evaluate them at the training style
and resolution and at a held-out style at double the resolution. They also run the default weights (the generalist,
for which this is a far held-out problem), list the learned optimizer's final loss against every tuned baseline,
and write ``DIR/<key>-images.png`` (content, style and results, Figure 9). Their features are random, not VGG-19
(see ``NEURAL_ART_NOTES``); every figure and table names them.

Experiments that cannot run here are rows saying why: CIFAR-10 without its data under ``--data-dir`` or without
bundled ``cifar10-conv`` weights; neural art without scikit-image (``pip install 'torch_lstm_optim[art]'``). Each
finished experiment is also written to ``DIR/<key>.json``; a rerun with the same settings reuses it, so an
interrupted run resumes. ``--only`` takes an experiment's key or a group (``neural-art``: both of its experiments).
``--quick`` is a smoke run: few problems, steps and learning rates (under a minute with tiny data).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..meta.outputs import OutputError, check_out, command_line, machine_description, write_json
from ..meta.tasks import Task, TaskError, make_task
from ..meta.tasks.neural_art import TEST_STYLE, TRAINING_STYLE
from ..meta.train import CheckpointError, DivergedError, parse_args, train
from ..network import CoordinatewiseLSTM
from ..weights import WeightsError, bundled_names, fingerprint, load_network
from .evaluate import BASELINES, LR_GRID, evaluate, learned_optimizer, plot, run_optimizer, summarise

QUICK = dict(steps_divisor=10, runs=2, tune_runs=1, grid=(LR_GRID[4], LR_GRID[6], LR_GRID[8]))  # lr 0.01, 0.1, 1
QUICK_TASK_OPTIONS = {"mnist-mlp": {"val_size": 100},
                      "cifar10-conv": {"val_size": 100, "eval_size": 100, "batch_size": 32},
                      "neural-art": {"resolution": 16, "filters": 4, "levels": 2}}
QUICK_META_TRAIN = ("--iterations", "1", "--horizon", "4", "--truncation", "2", "--meta-batch", "1",
                    "--val-problems", "1", "--eval-every", "1")


def task_args(options: dict[str, Any]) -> list[str]:
    """Task options as meta_train flags: ``--task-arg key=value`` each (values as Python literals, or words)."""
    return [flag for key, value in options.items() for flag in ("--task-arg", f"{key}={value}")]


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
    # Fields added after the first results were cached: a cached row without them counts them at these defaults.
    group: str = ""  # --only GROUP runs every experiment of the group
    meta_train: tuple[str, ...] = ()  # meta_train flags: `weights` is the folder under --out they train, first
    also: tuple[str, ...] = ()  # more weights run untuned (lr 1) beside the learned ones; not baselines
    each_baseline: bool = False  # the summary lists the learned final loss against every optimizer, not the best
    images: int = 0  # Figure 9: content, style and results of this many test problems (neural-art tasks)
    notes: str = ""  # what of the paper's experiment this does not match
    grid: tuple[float, ...] = LR_GRID  # the baselines' learning rates to tune over


# Neural art: the optimizer is meta-trained at 64x64 on TRAINING_STYLE and the `train` content images (from the
# generalist, 30 meta-iterations of 2 problems: what 2 CPU cores fit beside the evaluation in 30 minutes), with the
# paper's 128 steps per image in truncations of 32.
NEURAL_ART_OPTIONS = {"features": "random"}
# LR_GRID's 11 half-decades moved up one decade, to 1e-3 ... 100: in a first run SGD and NAG at 128x128 chose its top
# (10), and nothing below 1e-3 moves noise far enough in 128 steps for any baseline.
NEURAL_ART_GRID = tuple(10.0 ** (k / 2) for k in range(-6, 5))
NEURAL_ART_TRAINING = ("--task", "neural-art", *task_args(NEURAL_ART_OPTIONS),
                       "--init-weights", "generalist", "--horizon", "128", "--truncation", "32", "--meta-batch", "2",
                       "--iterations", "30", "--objective", "log", "--meta-lr", "1e-3", "--val-problems", "4",
                       "--eval-every", "5", "--seed", "0", "--no-compile")
NEURAL_ART_NOTES = (
    "Not matched: the features are a fixed random multi-scale conv net's, not VGG-19's (no pretrained weights can "
    "be fetched here; --task-arg features=vgg19 gives the paper's where they can, untested here); the content "
    "images are random crops of 7 scikit-image photographs (2 others for the test), not 1800 ImageNet images; the "
    "optimizer is fine-tuned from the generalist, where the paper trained from scratch, and for far fewer "
    "meta-iterations; fewer test and tuning problems. Matched: meta-training at 64x64 on one style, 128 steps per "
    "image in truncations of 32, held-out content, a held-out style at 128x128, SGD, RMSprop, Adam and NAG at "
    "learning rates tuned on other content images.")
NEURAL_ART = dict(task="neural-art", weights="neural-art-optimizer", steps=128, runs=6, tune_runs=2,
                  group="neural-art", meta_train=NEURAL_ART_TRAINING, also=("generalist",), each_baseline=True,
                  images=2, notes=NEURAL_ART_NOTES, grid=NEURAL_ART_GRID)

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
    Experiment("neural-art-64", "Neural art, training style, 64x64", "Fig. 8 left, Fig. 9",
               task_options={**NEURAL_ART_OPTIONS, "style": TRAINING_STYLE, "resolution": 64}, **NEURAL_ART),
    Experiment("neural-art-128", "Neural art, held-out style, 128x128", "Fig. 8 right, Fig. 9",
               task_options={**NEURAL_ART_OPTIONS, "style": TEST_STYLE, "resolution": 128}, **NEURAL_ART),
)


def settings(experiment: Experiment, quick: bool) -> dict[str, Any]:
    """What :func:`evaluate.evaluate` is run with: the experiment's counts, or ``--quick``'s; and the flags of the
    meta-training that comes first, for an experiment that has one."""
    options = dict(experiment.task_options)
    training = list(experiment.meta_train)
    if not quick:
        counts = dict(steps=experiment.steps, runs=experiment.runs, tune_runs=experiment.tune_runs,
                      grid=list(experiment.grid))
    else:
        quick_options = QUICK_TASK_OPTIONS.get(experiment.task, {})
        options.update(quick_options)
        training += [*QUICK_META_TRAIN, *task_args(quick_options)]
        counts = dict(steps=max(1, experiment.steps // QUICK["steps_divisor"]), runs=QUICK["runs"],
                      tune_runs=QUICK["tune_runs"], grid=list(QUICK["grid"]))
    return dict(task_options=options, **counts, **({"meta_train": training} if experiment.meta_train else {}))


def not_run_reason(experiment: Experiment, data_dir: str) -> str:
    """Why ``experiment`` cannot run here, or ``""``: CIFAR-10 data or weights missing, or not implemented."""
    if experiment.not_implemented:
        return f"not implemented: {experiment.not_implemented}"
    reasons = []
    if experiment.task == "cifar10-conv" and not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        reasons.append(f"no CIFAR-10 data under {data_dir}")
    for name in ([] if experiment.meta_train else [experiment.weights]) + list(experiment.also):
        if name not in bundled_names():
            reasons.append(f"no weights {name!r} (bundled: {', '.join(bundled_names()) or 'none'})")
    return "not run: " + "; ".join(reasons) if reasons else ""


def bundled_fingerprint(name: str) -> str | None:
    """:func:`weights.fingerprint` of the bundled weights ``name`` (``None`` if there are none by that name): a
    cached result stands only for the weights it was made with, not for whatever the name holds now."""
    return fingerprint(load_network(name)) if name in bundled_names() else None


def fingerprints(experiment: Experiment, out: Path) -> dict[str, Any]:
    """The fingerprints a cached result of ``experiment`` must hold to stand: of its weights (bundled, or those
    meta-trained into ``out``, ``None`` while there are none) and of its ``also`` weights."""
    if experiment.meta_train:
        folder = out / experiment.weights
        main = fingerprint(load_network(str(folder))) if (folder / "model.safetensors").exists() else None
    else:
        main = bundled_fingerprint(experiment.weights)
    also = {"also_sha256": {name: bundled_fingerprint(name) for name in experiment.also}} if experiment.also else {}
    return {"weights_sha256": main, **also}


def same_experiment(recorded: Any, experiment: Experiment) -> bool:
    """Whether a cached row's record of its experiment is ``experiment``; fields added to :class:`Experiment`
    since the row was written count at their defaults."""
    now = json.loads(json.dumps(asdict(experiment)))
    defaults = json.loads(json.dumps(asdict(Experiment("", "", ""))))
    return isinstance(recorded, dict) and {**defaults, **recorded} == now


def meta_train(experiment: Experiment, out: Path, data_dir: str, flags: list[str],
               threads: int) -> tuple[CoordinatewiseLSTM, dict[str, Any]]:
    """Meta-train ``experiment``'s weights with the project's meta-trainer (``flags``) into ``out/<weights>``:
    resumed if an earlier run was interrupted, reused if it finished. Returns the best weights and a summary."""
    argv = [*flags, "--out", str(out / experiment.weights), "--data-dir", data_dir, "--threads", str(threads),
            "--resume"]
    config, network_config = parse_args(argv)
    summary = train(config, network_config, "python -m torch_lstm_optim.meta_train " + shlex.join(argv))
    return load_network(config.out), {"command": summary["command"], "wall_seconds": summary["wall_seconds"],
                                      "iterations": summary["iteration"], "best_iteration": summary["best_iteration"],
                                      "best_val": summary["best_val"], "machine": summary["machine"]}


def run_experiment(experiment: Experiment, data_dir: str, quick: bool, out: Path = Path("."),
                   threads: int = 1) -> dict[str, Any]:
    """Run one experiment through :func:`evaluate.evaluate` (meta-training its weights into ``out`` first, if it
    has none bundled); a row saying why if it cannot run."""
    row: dict[str, Any] = {"key": experiment.key, "title": experiment.title, "paper": experiment.paper,
                           "claim": experiment.claim, "experiment": asdict(experiment),
                           "settings": settings(experiment, quick)}
    reason = not_run_reason(experiment, data_dir)
    if reason:
        return {**row, "status": reason, "held": None}
    s = row["settings"]
    training: dict[str, Any] = {}
    try:
        task = make_task(experiment.task, data_dir=data_dir, splits=("val", "test"), **s["task_options"])
        if experiment.meta_train:
            network, training = meta_train(experiment, out, data_dir, s["meta_train"], threads)
        else:
            network = load_network(experiment.weights)
        also = {name: load_network(name) for name in experiment.also}
    except (TaskError, WeightsError, CheckpointError, OutputError, DivergedError) as error:
        return {**row, "status": f"not run: {error}", "held": None}
    start = time.time()
    result = evaluate(task, network, s["steps"], s["runs"], s["tune_runs"], grid=s["grid"])
    problems = [task.sample(seed, "test") for seed in range(s["runs"])]
    for name, net in also.items():  # untuned (lr 1), on the same test problems
        result["optimizers"][f"{name} weights"] = {"lr": 1.0, **summarise(
            [run_optimizer(pb, learned_optimizer(net, pb), s["steps"]) for pb in problems])}
    if experiment.images:
        plot_images(task, network, result, f"{experiment.title} ({experiment.paper})",
                    out / f"{experiment.key}-images.png", experiment.images)
    result.update(weights=experiment.weights, weights_sha256=fingerprint(network), task_options=s["task_options"],
                  wall_seconds=time.time() - start)
    if also:
        result["also_sha256"] = {name: fingerprint(net) for name, net in also.items()}
    if training:
        result["meta_train"] = training
    if getattr(task, "features_text", None):
        result["features"] = task.features_text
    beats = result["beats_best_by_se"]
    return {**row, "status": "run", "result": result, "held": beats if experiment.claim == "beats" else not beats}


def plot_images(task: Task, network: CoordinatewiseLSTM, result: dict[str, Any], title: str, path: Path,
                count: int) -> None:
    """Figure 9: for the first ``count`` test problems, the content image, the style image, and the images the
    learned optimizer and the best tuned baseline (at its tuned learning rate) reach in ``result``'s steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = result["best_baseline"]
    lr = result["optimizers"][best]["lr"]
    fig, axes = plt.subplots(count, 4, figsize=(8, 2.2 * count + 0.5), squeeze=False)
    for seed, ax in enumerate(axes):
        problem = task.sample(seed, "test")
        runs = {"LSTM (learned)": run_optimizer(problem, learned_optimizer(network, problem), result["steps"],
                                                keep_params=True),
                f"{best} (lr {lr:.3g})": run_optimizer(problem, lambda p: BASELINES[best](p, lr), result["steps"],
                                                       keep_params=True)}
        panels = {"content": task.content_image(seed, "test")[0], "style": task.style_image(),
                  **{f"{name}: loss {run.final:.3g}": run.params["image"] for name, run in runs.items()}}
        for axis, (label, image) in zip(ax, panels.items()):
            axis.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy())
            axis.set_title(label, fontsize=8)
            axis.axis("off")
    fig.suptitle(f"{title}, {result['steps']} steps\n{task.features_text}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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


def each_baseline_table(row: dict[str, Any]) -> str:
    """The learned optimizer's mean final loss against every other optimizer of a run row (tuned baselines and
    untuned weights), with the features of a neural-art task and what of the paper's experiment was not matched."""
    result = row["result"]
    learned = result["optimizers"]["learned"]["final_mean"]
    lines = [f"{row['title']} ({row['paper']}): {result['steps']} steps, {result['runs']} test problems"
             + (f"; {result['features']}" if result.get("features") else ""),
             "", "| optimizer | lr | final loss (± s.e.) | learned / this |", "|---|---|---|---:|"]
    for name, r in result["optimizers"].items():
        how = "tuned" if r.get("tuning_scores") else "untuned"
        ratio = "" if name == "learned" else f"{learned / r['final_mean']:.3f}" if r["final_mean"] else "inf"
        lines.append(f"| {'LSTM (learned)' if name == 'learned' else name} | {r['lr']:.3g} ({how}) | "
                     f"{r['final_mean']:.4f} ± {r['final_se']:.4f} | {ratio} |")
    training = result.get("meta_train")
    if training:
        lines.append(f"\nMeta-trained first: {training['iterations']} meta-iterations in "
                     f"{training['wall_seconds']:.0f} s, best validation loss {training['best_val']:.4f} at "
                     f"iteration {training['best_iteration']} (`{training['command']}`).")
    notes = row["experiment"].get("notes")
    return "\n".join(lines + ([f"\n{notes}"] if notes else []))


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


def reproduce(out: Path, data_dir: str, quick: bool = False, only: list[str] | None = None,
              threads: int = 1) -> list[dict[str, Any]]:
    """Run the experiments (all, or the keys or groups in ``only``) into ``out``; return their rows. ``threads``:
    the torch threads of a meta-training run."""
    experiments = [e for e in EXPERIMENTS if not only or e.key in only or e.group in only]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, experiment in enumerate(experiments, start=1):
        cached_path = out / f"{experiment.key}.json"
        cached = _read_cached(cached_path)
        same = cached is not None and cached.get("status") == "run" and same_experiment(
            cached.get("experiment"), experiment) and cached.get("settings") == json.loads(
            json.dumps(settings(experiment, quick))) and all(
            cached["result"].get(k) == v for k, v in fingerprints(experiment, out).items())
        print(f"[{i}/{len(experiments)}] {experiment.key}: " + ("done before, reused" if same else "..."),
              file=sys.stderr, flush=True)
        row = cached if same else run_experiment(experiment, data_dir, quick, out, threads)
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
    groups = sorted({e.group for e in EXPERIMENTS if e.group})
    parser.add_argument("--only", action="append", choices=[e.key for e in EXPERIMENTS] + groups, default=None,
                        help=f"run only this experiment, or this group of experiments ({', '.join(groups)}) "
                             "(repeatable)")
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
    done = reproduce(out, args.data_dir, args.quick, args.only, args.threads)
    rows = {**kept, **{row["key"]: row for row in done}}
    rows = [rows[e.key] for e in EXPERIMENTS if e.key in rows]  # the paper's order
    summary = {"command": command,
               "machine": machine_description(), "quick": args.quick, "data_dir": args.data_dir,
               "wall_seconds": time.time() - start, "experiments": rows}
    write_json(out / "results.json", summary)
    print(table(rows))
    for row in rows:
        if row["status"] == "run" and row["experiment"].get("each_baseline"):
            print(f"\n{each_baseline_table(row)}")
    print(f"wall time {summary['wall_seconds']:.0f} s; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
