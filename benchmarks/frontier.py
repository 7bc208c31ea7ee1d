"""The cost-quality frontier of rule sizes and forms: each weight set's step cost beside its held-out quality.

    python benchmarks/frontier.py                       # the committed weight sets, 1M parameters, eager and compiled
    python benchmarks/frontier.py --point "mine" runs/small results/mine/results.json --plot frontier.png

A point is a label, a weight set (bundled name, folder or hub id) and the ``results.json`` of ``python -m
torch_lstm_optim.evaluate --suite generalization`` run on those weights. The quality is read from that file (wins of
its 28 (problem, horizon) pairs against the best tuned baseline, the median and worst ratio of the learned loss over
the best tuned one); the cost is measured here, by ``benchmarks/step_cost.py``'s machinery: one
``LSTMOptimizer.step()`` on the same 4-layer model of ``--size`` parameters with random gradients, against
``torch.optim.Adam(foreach=True)`` in the same interleaved rounds, as a ratio of CPU time. A step's cost depends on the
form (``config.json``: layers, width, features, head) and not on the weights' values, so each form is timed with
random weights. ``--compile`` also times ``LSTMOptimizer(compile=True)``.

Prints a markdown table and writes the plot (``--plot``) and every number (``--json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_cost beside this script, however it is started
import step_cost  # noqa: E402
from torch_lstm_optim.weights import load_network  # noqa: E402

POINTS = [
    ("default 2x20, third generation (generalist)", "generalist", "results/generalization-v3/results.json"),
    ("first default 2x20 (generalist-v1)", "generalist-v1", "results/generalization/results.json"),
    ("second generation 2x20 (campaign, iteration 330)", "results/campaign-generalist-v2",
     "results/campaign-generalist-v2/suite-session-1-iteration-330.json"),
    ("small 1x8 (generalist-small)", "generalist-small", "results/generalization-small/results.json"),
    ("2x20 every 8th step (generalist-fast)", "generalist-fast", "results/generalization-fast/results.json"),
    ("2x20 every 16th step (generalist-fast16)", "generalist-fast16", "results/generalization-fast16/results.json"),
]


def quality(results_path: Path) -> dict[str, object]:
    """The suite's summary figures from its ``results.json``; a clear error if it is not a suite's result."""
    try:
        report = json.loads(results_path.read_text())
        summary = report["summary"]
        return {"won": summary["won"], "pairs": summary["pairs"], "median_ratio": summary["median_ratio"],
                "worst_ratio": summary["worst_ratio"], "worst_pair": summary["worst_pair"],
                "diverged_in": len(summary["learned_diverged_in"]),
                "untuned_beaten": summary["pairs"] - len(summary["untuned_not_beaten_in"]),
                "suite_command": report["command"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{results_path}: not the results.json of an `evaluate --suite` run ({error!r})") from None


def form(network_config: object) -> str:
    """``"2x20 scale_free/direction_magnitude"`` (``", LSTM every 8"`` where it runs on one step in 8): the parts of
    a config that set a step's cost."""
    c = network_config
    every = f", LSTM every {c.lstm_every}" if c.lstm_every > 1 else ""
    return f"{c.num_layers}x{c.hidden_size} {c.preprocessing}/{c.output}{every}"


def measure(points: list[tuple[str, str, Path]], args: argparse.Namespace) -> dict[str, object]:
    """Time every point's form against Adam in one run (step_cost's interleaved rounds); join with the quality."""
    rows, configs = [], {}
    for label, weights, results_path in points:
        config = load_network(weights).config
        configs[label] = config
        rows.append({"label": label, "weights": weights, "results": str(results_path), "form": form(config),
                     "flops_per_coord": step_cost.flops_per_coordinate(config), **quality(results_path)})
    kinds = ["adam", *configs, *(f"{label}+compile" for label in configs if args.compile)]
    timing = step_cost.measure_size(args.size, kinds, args, torch.device("cpu"), configs)
    ratio = {row["optimizer"]: row["ratio_to_adam"] for row in timing["results"]}
    for row in rows:
        row["cost_x_adam"] = ratio[row["label"]]
        row["cost_x_adam_compiled"] = ratio.get(f"{row['label']}+compile")
    return {"machine": step_cost.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(), "params": timing["params"], "chunk_size": args.chunk_size,
            "repeats": args.repeats, "load_average": os.getloadavg()[0],
            "command": " ".join(["python benchmarks/frontier.py", *(sys.argv[1:])]), "points": rows,
            "timing": timing}


def print_table(report: dict[str, object]) -> None:
    print(f"\n{report['machine']}; torch {report['torch']}; {report['threads']} thread(s); step cost at "
          f"{report['params']:,} parameters, CPU time, median of {report['repeats']} interleaved rounds; "
          f"{report['date']}; 1-minute load average {report['load_average']:.1f}\n")
    print("| weights | form | FLOP/coordinate | step x Adam | compiled step x Adam | suite wins | median ratio "
          "| worst ratio | diverged pairs | untuned beaten |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["points"]:
        compiled = "" if r["cost_x_adam_compiled"] is None else f"{r['cost_x_adam_compiled']:.1f}"
        print(f"| {r['label']} | {r['form']} | {r['flops_per_coord']:,} | {r['cost_x_adam']:.1f} | {compiled} | "
              f"{r['won']} of {r['pairs']} | {r['median_ratio']:.2f} | {r['worst_ratio']:.2g} | {r['diverged_in']} | "
              f"{r['untuned_beaten']} |")


def plot(report: dict[str, object], path: Path) -> None:
    """Two panels against the step's cost: pairs won, and the median ratio to the best tuned baseline (log). A
    filled marker is the eager step, an open one the compiled step of the same weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, (wins, median) = plt.subplots(1, 2, figsize=(10, 5.2))
    costs = []
    for index, r in enumerate(report["points"]):
        color = f"C{index}"
        for axis, value in ((wins, r["won"]), (median, r["median_ratio"])):
            axis.plot(r["cost_x_adam"], value, "o", color=color, ms=8, label=r["label"] if axis is wins else None)
            if r["cost_x_adam_compiled"] is not None:
                axis.plot(r["cost_x_adam_compiled"], value, "o", mfc="none", color=color, ms=8)
                axis.plot([r["cost_x_adam_compiled"], r["cost_x_adam"]], [value, value], ":", color=color, lw=1)
        costs += [c for c in (r["cost_x_adam"], r["cost_x_adam_compiled"]) if c is not None]
    for axis in (wins, median):
        axis.set_xscale("log")
        low, high = min(costs) / 1.5, max(costs) * 1.5
        axis.set_xlim(low, high)
        axis.set_xticks([t for t in (10, 20, 30, 50, 100, 200, 500, 1000) if low <= t <= high])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(f"step cost at {report['params']:,} parameters, x Adam")
        axis.grid(alpha=0.3, which="both")
        axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    wins.set_ylim(0, 28)
    wins.set_ylabel("suite pairs won (of 28)")
    median.set_yscale("log")
    median.axhline(1.0, color="grey", lw=0.8)
    median.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    median.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    median.set_ylabel("median ratio to the best tuned (lower is better)")
    fig.legend(loc="lower center", ncol=min(3, len(report["points"])), fontsize=8, frameon=False)
    fig.suptitle(f"Cost-quality frontier: filled eager, open compiled ({report['machine']}, {report['threads']} "
                 f"thread, {report['date']})", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point", nargs=3, action="append", metavar=("LABEL", "WEIGHTS", "SUITE_RESULTS"),
                        help="a weight set and its suite results.json (repeatable; default: the committed sets)")
    parser.add_argument("--size", type=step_cost.parse_size, default=1_000_000, help="parameters of the timed model")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one step of every contender each)")
    parser.add_argument("--compile", action="store_true", help="also time LSTMOptimizer(compile=True)")
    parser.add_argument("--chunk-size", type=int, help="LSTMOptimizer's chunk_size (default: its own default)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--plot", type=Path, default=Path("docs/frontier.png"))
    parser.add_argument("--json", type=Path, default=Path("results/frontier/results.json"))
    args = parser.parse_args(argv)
    if min(args.repeats, args.threads, args.size) < 1:
        parser.error("--repeats, --threads and --size must be >= 1")
    # what step_cost.measure_size reads besides these
    args.clock, args.warmup, args.no_memory = "cpu", 1, True
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    points = [(label, weights, Path(results)) for label, weights, results in (args.point or POINTS)]
    report = measure(points, args)
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    plot(report, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")
    return report


if __name__ == "__main__":
    main()
