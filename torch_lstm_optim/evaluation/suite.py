"""The generalization suite: the learned optimizer, untuned, on held-out problems of families it never trained on.

``python -m torch_lstm_optim.evaluate --suite generalization --out results/generalization [--weights W] [--quick]``
(or ``python -m torch_lstm_optim.evaluation.suite ...``, the same).

Every problem of :data:`torch_lstm_optim.evaluation.heldout.SUITE` runs at every horizon (100 and 1000 steps) on
``--seeds`` ``test`` problems, the same problems and minibatches for every optimizer:

- the learned optimizer, untuned: ``LSTMOptimizer(params, weights=W)`` at its default ``lr=1``;
- tuned baselines: SGD, NAG, RMSprop, Adam and AdamW, each at the learning rate of ``LR_GRID`` (1e-4 to 10, half
  decades) with the lowest mean final loss on ``--tune-seeds`` separate ``val`` problems of the same horizon (3 at
  100 steps, 2 at 1000: cost). At 1000 steps the search starts from the grid points within a decade of the 100-step
  choice and widens while the best is at an edge (``--window``; see :func:`tune`);
- untuned baselines: Adam(1e-3), Prodigy (lr 1) and schedule-free AdamW (its defaults, the final loss taken in its
  eval mode). The last two need ``pip install 'torch_lstm_optim[eval]'``; without them they are skipped, and the
  output says so.

Per (problem, horizon) pair it reports the ratio of the learned optimizer's mean final loss to the best tuned
baseline's and to the best untuned one's (< 1: the learned optimizer wins), divergences (a non-finite loss in any
seed), and seconds per run of the learned optimizer and of tuned Adam. Losses below ``LOSS_FLOOR`` count as
``LOSS_FLOOR`` in ratios: every loss of the suite is >= 0 (the test functions' minima are exactly 0), and below
1e-6 a problem is solved, so a ratio of two such losses (float32 rounding, say 1e-9 against 1e-14) would say
nothing. Writes ``results.json`` after every pair (an interrupted run resumes with the same command), a PNG of the
ratios and a markdown table with the summary against the bar of issue 11.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..meta.outputs import check_out, command_line, machine_description, write_json
from ..meta.tasks import TaskError
from ..meta.tasks.base import _check_problem
from ..network import CoordinatewiseLSTM
from ..weights import WeightsError, fingerprint, load_network
from .evaluate import (BASELINES, LR_GRID, MAX_LR, OptimizerFactory, card_folder, evaluate, learned_optimizer,
                       run_optimizer, summarise, tune_lr, write_card_section)
from .heldout import FAMILY_OF, SUITE, why

SUITES: dict[str, dict[str, Callable[[], Any]]] = {"generalization": SUITE}
TUNED = ("sgd", "nag", "rmsprop", "adam", "adamw")
LOSS_FLOOR = 1e-6
QUICK = {"problems": ("beale-2d", "breast-cancer-logistic", "matrix-completion"), "horizons": (20, 50), "seeds": 2,
         "tune_seeds": (1, 1), "grid": (1e-3, 1e-2, 1e-1)}
DEFAULT_TEXT = {"weights": "the package default", "problems": "all of the suite", "horizons": "100 1000",
                "tune_seeds": "3 2", "grid": "1e-4 to 10 in half decades, 11 values"}
BAR = {"wins": 0.8, "median": 0.8, "worst": 1.5}


@dataclass
class SuiteConfig:
    """What the suite runs; the command-line flags map one-to-one onto these fields."""

    out: str = field(metadata={"help": "output folder for results.json, the plot and the table"})
    suite: str = field(default="generalization", metadata={"help": f"which suite: one of {sorted(SUITES)}"})
    weights: str | None = field(default=None, metadata={
        "help": "the learned optimizer's weights: bundled name, folder or hub id"})
    quick: bool = field(default=False, metadata={
        "help": f"a smoke run in well under a minute: {', '.join(QUICK['problems'])} at 20 and 50 steps, 2 seeds, "
                "1 tuning seed, lr grid 1e-3, 1e-2, 1e-1 (explicit flags still win)"})
    problems: tuple[str, ...] | None = field(default=None, metadata={"help": "run only these problems"})
    horizons: tuple[int, ...] = field(default=(100, 1000), metadata={"help": "steps per run, one pair per horizon"})
    seeds: int = field(default=5, metadata={"help": "test problems (seeds) per optimizer and pair"})
    tune_seeds: tuple[int, ...] = field(default=(3, 2), metadata={
        "help": "val problems per learning rate when tuning, one count per horizon (fewer at 1000 steps: cost)"})
    grid: tuple[float, ...] = field(default=LR_GRID, metadata={"help": "learning rates the tuned baselines try"})
    window: int = field(default=2, metadata={
        "help": "at each horizon after a problem's first, tune over the grid points within this many of the "
                "previous horizon's best learning rate, widened while the best is at an edge (0: the whole grid)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (timings are per core at 1)"})
    update_card: bool = field(default=False, metadata={
        "help": "write the table into the model card (README.md) of the --weights folder, under '## Generalization "
                "suite'"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a results.json in --out made by another command (refused otherwise; the same command "
                "resumes it)"})
    baselines_from: str | None = field(default=None, metadata={
        "help": "a results.json of this suite run with other weights: take the baselines' results of its pairs with "
                "the same settings from it and run only the learned optimizer (the baselines do not depend on the "
                "weights: this compares several weights at the cost of the learned runs)"})


def untuned_baselines() -> tuple[dict[str, OptimizerFactory], dict[str, float], dict[str, str]]:
    """The tuning-free peers: factories, the learning rate each runs at, and those skipped (name -> why)."""
    factories: dict[str, OptimizerFactory] = {"adam(1e-3)": BASELINES["adam"]}
    lrs = {"adam(1e-3)": 1e-3}
    skipped = {}
    try:
        from prodigyopt import Prodigy
    except ImportError:
        skipped["prodigy"] = "not installed: pip install prodigyopt (or 'torch_lstm_optim[eval]')"
    else:
        factories["prodigy"] = lambda params, lr: Prodigy(params, lr=lr)
        lrs["prodigy"] = 1.0
    try:
        from schedulefree import AdamWScheduleFree
    except ImportError:
        skipped["schedule-free adamw"] = "not installed: pip install schedulefree (or 'torch_lstm_optim[eval]')"
    else:
        def schedule_free(params, lr):
            optimizer = AdamWScheduleFree(params, lr=lr)
            optimizer.train()  # evaluate.run_optimizer switches it to eval() for the final loss
            return optimizer

        factories["schedule-free adamw"] = schedule_free
        lrs["schedule-free adamw"] = inspect.signature(AdamWScheduleFree).parameters["lr"].default
    return factories, lrs, skipped


def ratio(loss: float, reference: float) -> float:
    """``loss / reference`` with both floored at ``LOSS_FLOOR``; ``inf`` if ``loss`` is not finite."""
    if not math.isfinite(loss):
        return math.inf
    return max(loss, LOSS_FLOOR) / max(reference, LOSS_FLOOR)


def tune(task: Any, factory: OptimizerFactory, steps: int, seeds: int, grid: tuple[float, ...],
         centre: float | None = None, window: int = 0) -> tuple[float, dict[float, float]]:
    """:func:`~torch_lstm_optim.evaluation.evaluate.tune_lr` over ``grid``; with a ``centre`` (the best learning rate
    at a shorter horizon), over the grid points within ``window`` of it only, widened one point at a time while the
    best is at an edge of what was tried. For a loss that is unimodal in the log learning rate it picks what the whole
    grid picks, at about half the cost (what makes 1000-step tuning affordable)."""
    if centre is None or window <= 0:
        return tune_lr(task, factory, steps, range(seeds), grid)
    grid = tuple(sorted(grid))
    i = min(range(len(grid)), key=lambda j: abs(math.log(grid[j] / centre)))
    lo, hi = max(0, i - window), min(len(grid) - 1, i + window)
    scores = tune_lr(task, factory, steps, range(seeds), grid[lo:hi + 1])[1]
    while True:
        best = grid.index(min(scores, key=scores.get))
        if best == lo > 0:
            lo -= 1
            extra = grid[lo]
        elif best == hi < len(grid) - 1:
            hi += 1
            extra = grid[hi]
        else:
            return grid[best], scores
        scores.update(tune_lr(task, factory, steps, range(seeds), (extra,))[1])


def run_pair(name: str, steps: int, network: CoordinatewiseLSTM, config: SuiteConfig, tune_seeds: int,
             centres: dict[str, float] | None = None, baselines: dict | None = None) -> dict:
    """One (problem, horizon) pair: every optimizer on the same test problems, and the learned one's ratios.

    ``centres``: the tuned baselines' learning rates at the problem's previous horizon (see :func:`tune`).
    ``baselines``: the same pair of another run (``--baselines-from``), whose baselines' results are taken as they
    are, so that only the learned optimizer runs.
    """
    task = SUITES[config.suite][name]()
    untuned, untuned_lrs, _ = untuned_baselines()
    every = max(1, steps // 100)
    if baselines is None:
        tuned = {k: tune(task, BASELINES[k], steps, tune_seeds, config.grid, (centres or {}).get(k), config.window)
                 for k in TUNED}
        result = evaluate(task, network, steps, config.seeds, tune_seeds,
                          baselines={**{k: BASELINES[k] for k in TUNED}, **untuned}, grid=config.grid,
                          lrs={**untuned_lrs, **{k: lr for k, (lr, _) in tuned.items()}})
        optimizers = result["optimizers"]
        for k, (_, scores) in tuned.items():
            optimizers[k]["tuning_scores"] = {str(lr): score for lr, score in sorted(scores.items())}
    else:
        problems = [task.sample(seed, "test") for seed in range(config.seeds)]
        learned_runs = summarise([run_optimizer(pb, learned_optimizer(network, pb), steps) for pb in problems])
        optimizers = {"learned": {"lr": 1.0, **learned_runs},
                      **{k: v for k, v in baselines["optimizers"].items() if k != "learned"}}
    for r in optimizers.values():  # curves at about 100 points keep results.json small
        if len(r["curve_mean"]) == steps + 1:  # not yet thinned (those taken from another run are)
            r["curve_mean"], r["curve_se"] = r["curve_mean"][::every], r["curve_se"][::every]
    learned = optimizers["learned"]["final_mean"]
    best_tuned = min(TUNED, key=lambda k: optimizers[k]["final_mean"])
    best_untuned = min(untuned, key=lambda k: optimizers[k]["final_mean"])
    return {"problem": name, "family": FAMILY_OF.get(name, ""), "why": why(name), "steps": steps,
            "seeds": config.seeds, "tune_seeds": tune_seeds, "curve_every": every,
            "best_tuned": best_tuned, "ratio_tuned": ratio(learned, optimizers[best_tuned]["final_mean"]),
            "best_untuned": best_untuned, "ratio_untuned": ratio(learned, optimizers[best_untuned]["final_mean"]),
            "beats_every_untuned": all(ratio(learned, optimizers[k]["final_mean"]) < 1 for k in untuned),
            "diverged": {k: r["diverged"] for k, r in optimizers.items()},
            "seconds_learned": optimizers["learned"]["seconds_per_run"],
            "seconds_adam": optimizers["adam"]["seconds_per_run"], "optimizers": optimizers}


def summary(pairs: list[dict]) -> dict[str, Any]:
    """Fraction of pairs won against the best tuned baseline, median and worst ratio, and the bar's verdicts."""
    ratios = [p["ratio_tuned"] for p in pairs]
    won = sum(r < 1 for r in ratios)
    diverged = [f"{p['problem']}@{p['steps']}" for p in pairs if p["diverged"]["learned"]]
    not_beaten = [f"{p['problem']}@{p['steps']}" for p in pairs if not p["beats_every_untuned"]]
    worst = pairs[ratios.index(max(ratios))]
    result = {"pairs": len(pairs), "won": won, "fraction_won": won / len(pairs),
              "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios),
              "worst_pair": f"{worst['problem']}@{worst['steps']}",
              "learned_diverged_in": diverged, "untuned_not_beaten_in": not_beaten}
    result["bar"] = {
        f"wins >= {BAR['wins']:.0%} of pairs": result["fraction_won"] >= BAR["wins"],
        f"median ratio <= {BAR['median']}": result["median_ratio"] <= BAR["median"],
        f"worst ratio <= {BAR['worst']}": result["worst_ratio"] <= BAR["worst"],
        "no divergence": not diverged,
        "beats every untuned baseline on every pair": not not_beaten}
    result["passed"] = all(result["bar"].values())
    result["tuned_against_the_rest"] = tuned_against_the_rest(pairs)
    return result


def tuned_against_the_rest(pairs: list[dict]) -> dict[str, dict[str, float]]:
    """The learned optimizer's scores, given to each tuned baseline against the best of the OTHER tuned ones (each
    at its own tuned learning rate): what the bar asks of one rule, measured on rules tuned per problem."""
    scores = {}
    for name in TUNED:
        ratios = [ratio(p["optimizers"][name]["final_mean"],
                        min(p["optimizers"][k]["final_mean"] for k in TUNED if k != name)) for p in pairs]
        scores[name] = {"won": sum(r < 1 for r in ratios), "median_ratio": statistics.median(ratios),
                        "worst_ratio": max(ratios)}
    return scores


def table(result: dict[str, Any]) -> str:
    """The markdown table, one row per (problem, horizon) pair, and the summary against the bar."""
    lines = ["| problem | steps | learned | best tuned (lr) | ratio | best untuned | ratio | diverged (learned; "
             "others) | s/run learned | s/run adam |", "|---|---:|---:|---|---:|---|---:|---|---:|---:|"]
    for p in result["pairs"]:
        o = p["optimizers"]
        others = ", ".join(f"{k} {n}" for k, n in p["diverged"].items() if n and k != "learned") or "-"
        lines.append(
            f"| {p['problem']} | {p['steps']} | {o['learned']['final_mean']:.4g} | {p['best_tuned']} "
            f"({o[p['best_tuned']]['lr']:.3g}) {o[p['best_tuned']]['final_mean']:.4g} | {p['ratio_tuned']:.3g} | "
            f"{p['best_untuned']} {o[p['best_untuned']]['final_mean']:.4g} | {p['ratio_untuned']:.3g} | "
            f"{p['diverged']['learned']}; {others} | {p['seconds_learned']:.2f} | {p['seconds_adam']:.2f} |")
    s = result["summary"]
    lines += ["", f"Won {s['won']} of {s['pairs']} pairs ({s['fraction_won']:.0%}) against the best tuned baseline; "
              f"median ratio {s['median_ratio']:.3g}, worst {s['worst_ratio']:.3g} ({s['worst_pair']}).", "",
              "| bar (issue 11) | met |", "|---|---|"]
    lines += [f"| {criterion} | {'yes' if met else '**no**'} |" for criterion, met in s["bar"].items()]
    lines += ["", "The same scores for each tuned baseline, at its tuned learning rate, against the best of the other "
              "tuned ones:", "", "| tuned baseline | wins | median ratio | worst ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {t['won']} | {t['median_ratio']:.3g} | {t['worst_ratio']:.3g} |"
              for name, t in s["tuned_against_the_rest"].items()]
    if result["skipped"]:
        lines += ["", "Skipped untuned baselines: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items())]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Ratio to the best tuned baseline on a log axis, one bar per (problem, horizon), a line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.patches import Patch

    pairs = result["pairs"]
    finite = [r for p in pairs for r in (p["ratio_tuned"], p["ratio_untuned"]) if math.isfinite(r)] or [1.0]
    cap = max(10.0, 2 * max(finite))  # where a diverged run's (infinite) ratio is drawn
    horizons = sorted({p["steps"] for p in pairs})
    colours = dict(zip(horizons, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * len(pairs) + 1.5), 4.2))
    for i, p in enumerate(pairs):  # bars grow from the line at 1: down where the learned optimizer wins
        value = min(p["ratio_tuned"], cap)
        ax.bar(i, value - 1, bottom=1, color=colours[p["steps"]], hatch="//" if value == cap else None)
        if not math.isfinite(p["ratio_tuned"]):
            ax.text(i, cap, "diverged", rotation=90, ha="center", va="top", fontsize=7)
    ax.plot(range(len(pairs)), [min(p["ratio_untuned"], cap) for p in pairs], "kx", markersize=5)
    handles = [Patch(color=c, label=f"vs best tuned, {steps} steps") for steps, c in colours.items()]
    handles.append(ax.plot([], [], "kx", label="vs best untuned")[0])
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylim(min(*finite, 1.0) / 2, cap * 2)  # the bars of wins go below 1: keep them in view
    ax.set_xticks(range(len(pairs)), [f"{p['problem']} {p['steps']}" for p in pairs], rotation=70, ha="right",
                  fontsize=7)
    ax.set_ylabel("learned / best baseline (mean final loss)")
    s = result["summary"]
    ax.set_title(f"{result['suite']} suite, weights {result['weights']}: won {s['won']}/{s['pairs']}, median "
                 f"{s['median_ratio']:.2f}", fontsize=9)
    ax.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def suite_settings(config: SuiteConfig) -> dict[str, Any]:
    """What makes two runs' pairs comparable: the config without where it writes, its threads and its reuse."""
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("out", "threads", "baselines_from", "update_card", "overwrite")}
    return json.loads(json.dumps(settings))  # tuples as lists, as they come back from results.json


def reusable_pairs(config: SuiteConfig, settings: dict, skipped: dict) -> dict[tuple[str, int], dict]:
    """The pairs of ``--baselines-from`` whose baselines can stand for this run's: the same settings but the weights,
    the same untuned baselines skipped. Raises ``ValueError`` naming what differs."""
    if not config.baselines_from:
        return {}
    try:
        other = json.loads(Path(config.baselines_from).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--baselines-from {config.baselines_from}: cannot be read ({error})") from None
    if not isinstance(other, dict) or not isinstance(other.get("settings", {}), dict):
        raise ValueError(f"--baselines-from {config.baselines_from}: not a suite's results.json")
    theirs = {k: v for k, v in other.get("settings", {}).items() if k not in ("weights", "problems")}
    ours = {k: v for k, v in settings.items() if k not in ("weights", "problems")}
    if theirs != ours or other.get("skipped") != skipped:
        different = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k)) or ["skipped baselines"]
        raise ValueError(f"--baselines-from {config.baselines_from}: made with other settings ({', '.join(different)})"
                         "; its baselines cannot stand for this run's")
    return {(p["problem"], p["steps"]): p for p in other.get("pairs", [])}


def run_suite(config: SuiteConfig, network: CoordinatewiseLSTM, command: str = "") -> dict[str, Any]:
    """Run (or resume) every pair, writing ``results.json`` after each; return the result with its summary."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _, _, skipped = untuned_baselines()
    settings = suite_settings(config)
    done: dict[tuple[str, int], dict] = {}
    path = out / "results.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("settings") == settings and old.get("skipped") == skipped:
            if old.get("weights_sha256") == fingerprint(network):
                done = {(p["problem"], p["steps"]): p for p in old.get("pairs", [])}
                print(f"resuming: {len(done)} pairs already in {path}", file=sys.stderr)
            else:
                print(f"{path} holds results of other weights (the same name or folder, other contents): "
                      "running every pair again", file=sys.stderr)
    result = {"suite": config.suite, "weights": str(config.weights or "default"),
              "weights_source": asdict(network.source) if getattr(network, "source", None) else None,
              "weights_sha256": fingerprint(network), "settings": settings, "loss_floor": LOSS_FLOOR,
              "tuned": list(TUNED), "skipped": skipped,
              "machine": machine_description(), "command": command, "pairs": []}
    for name, reason in skipped.items():
        print(f"skipping untuned baseline {name}: {reason}", file=sys.stderr)
    reusable = reusable_pairs(config, settings, skipped)
    todo = [(name, steps, tune) for name in config.problems for steps, tune in zip(config.horizons, config.tune_seeds)]
    for i, (name, steps, tune) in enumerate(todo, 1):
        pair = done.get((name, steps))
        if pair is None:
            start = time.time()
            previous = [p for p in result["pairs"] if p["problem"] == name]
            centres = {k: previous[-1]["optimizers"][k]["lr"] for k in TUNED} if previous else None
            pair = run_pair(name, steps, network, config, tune, centres, reusable.get((name, steps)))
            pair["pair_seconds"] = time.time() - start
        result["pairs"].append(pair)
        result["wall_seconds"] = sum(p["pair_seconds"] for p in result["pairs"])
        write_json(path, result)
        print(f"[{i}/{len(todo)}] {name} at {steps} steps: learned / best tuned ({pair['best_tuned']}) "
              f"{pair['ratio_tuned']:.3g}, / best untuned ({pair['best_untuned']}) {pair['ratio_untuned']:.3g} "
              f"({pair['pair_seconds']:.0f} s)", file=sys.stderr, flush=True)
    result["summary"] = summary(result["pairs"])
    write_json(path, result)
    plot(result, out / f"{config.suite}.png")
    (out / "table.md").write_text(table(result) + "\n")
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m torch_lstm_optim.evaluate --suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = {"problems": dict(nargs="+"), "horizons": dict(nargs="+", type=int),
             "tune_seeds": dict(nargs="+", type=int), "grid": dict(nargs="+", type=float), "seeds": dict(type=int),
             "threads": dict(type=int), "window": dict(type=int)}
    for f in SuiteConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("quick", "update_card", "overwrite"):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.name == "out":
            p.add_argument(flag, required=True, help=f.metadata["help"])
        else:
            default = DEFAULT_TEXT.get(f.name, f.default)
            p.add_argument(flag, default=None, help=f"{f.metadata['help']} (default: {default})",
                           **kinds.get(f.name, {}))
    return p


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    """Flags -> config: unset flags take ``--quick``'s values, then the defaults; bad values raise ``ValueError``."""
    if args.suite is not None and args.suite not in SUITES:
        raise ValueError(f"unknown suite {args.suite!r}: use one of {sorted(SUITES)}")
    flags = ("quick", "update_card", "overwrite")
    given = {k: v for k, v in vars(args).items() if v is not None and k not in flags}
    preset = {k: v for k, v in QUICK.items() if k not in given} if args.quick else {}
    config = SuiteConfig(**{**preset, **given}, **{k: getattr(args, k) for k in flags})
    config.problems = tuple(config.problems or SUITES[config.suite])
    unknown = [p for p in config.problems if p not in SUITES[config.suite]]
    if unknown:
        raise ValueError(f"unknown problems {unknown} in suite {config.suite!r}: use some of "
                         f"{sorted(SUITES[config.suite])}")
    config.horizons, config.tune_seeds, config.grid = (tuple(config.horizons), tuple(config.tune_seeds),
                                                       tuple(config.grid))
    if len(config.tune_seeds) != len(config.horizons):
        raise ValueError(f"--tune-seeds needs one count per horizon {list(config.horizons)}, found "
                         f"{list(config.tune_seeds)}")
    if min(*config.horizons, *config.tune_seeds, config.seeds, config.threads) < 1 or not config.grid or \
            config.window < 0:
        raise ValueError("--horizons, --tune-seeds, --seeds and --threads must be >= 1, --window >= 0 and --grid "
                         "non-empty")
    if not all(0 < lr <= MAX_LR for lr in config.grid):
        raise ValueError(f"--grid: learning rates must be numbers in (0, {MAX_LR:g}], found {list(config.grid)}")
    if config.seeds < 2:
        raise ValueError(f"--seeds must be >= 2 (standard errors), found {config.seeds}")
    return config


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    command = command_line("evaluate", argv)
    try:
        config = config_from_args(args)
        check_out(Path(config.out), command, config.overwrite)
        if config.update_card:
            card_folder(config.weights)
        torch.set_num_threads(config.threads)
        network = load_network(config.weights)
        reusable_pairs(config, suite_settings(config), untuned_baselines()[2])  # a bad --baselines-from: now
        for name in config.problems:  # every problem builds before hours of work: e.g. scikit-learn missing
            for split in ("val", "test"):
                _check_problem(SUITES[config.suite][name](), split, f"suite problem {name!r} ({split})")
    except (ValueError, TaskError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    result = run_suite(config, network, command)
    if config.update_card:
        write_card_section(card_folder(config.weights), "## Generalization suite",
                           f"Measured with `{result['command']}` on {result['machine']} in "
                           f"{result['wall_seconds'] / 60:.0f} min.\n\n{table(result)}")
    print(table(result))
    print(f"\nwall time {result['wall_seconds']:.0f} s; results in {Path(config.out) / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
