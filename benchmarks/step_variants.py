"""Cheaper ways to compute the same update rule on CPU, timed against :meth:`CoordinatewiseLSTM.step` in one run.

    python benchmarks/step_variants.py                       # the cell variants on one chunk of 2048 coordinates
    python benchmarks/step_variants.py --chunk-sizes 1024,2048,4096,8192,16384 --size 1M

Part 3 of issue 27: a variant may replace the rule only if it is faster by more than this machine's noise and
changes the rule's outputs by no more than float32 rounding. Each variant computes the LSTM layers of the rule its
own way (the features and the output head are the network's own); every one is timed on the same chunk of
coordinates (random gradients, and a state after ``--warmup-steps`` steps of the rule, so that it is not all
zeros) under ``torch.no_grad``, as the optimizer runs it, in interleaved rounds with a rotating order. Reported: the
median of ``--repeats`` rounds, its ratio to the median of ``network`` (the rule as it ships), the spread of its
times (interquartile range over median: the noise) and the largest difference of its update and new state from
those of the differentiable path (``network.step`` with autograd on), over their largest magnitude.

- ``network``: the network's own ``step``, as the optimizer runs it (``CoordinatewiseLSTM.step``): a ``cat``, then
  a new tensor for every elementwise op, the same code that meta-training differentiates.
- ``in-place``: under ``torch.no_grad`` only, the gates from two matmuls (no ``cat``), the cell written over them in
  place. Measured 1.07-1.13x faster for the optimizer's step at 1M parameters, within 3e-7; not taken, since it is
  a second copy of the LSTM math beside the one meta-training differentiates, which the project rules out.
- ``bf16-matmul``: the gate matmul in bfloat16 (``torch.autocast``), gates back to float32 for the sigmoid; only on
  a CPU with native bfloat16 (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``; else skipped, and said so).
- ``fewer-temporaries``: the same algebra with fewer intermediate tensors and still differentiable: no ``cat`` of
  the layer input and ``h`` (two matmuls accumulate into one gates tensor), ``c = f c + 2 i g - i`` and
  ``h = 2 o s - o`` as ``addcmul``s.

With ``--chunk-sizes``, ``LSTMOptimizer.step()`` of a ``--size`` model (4 square ``nn.Linear`` layers) is timed
instead at each chunk size, side by side (one optimizer whose ``chunk_size`` is set before each step), and with
``--variants`` for each of those variants of the cell (an optimizer each).
The clock is this process's CPU time (``time.process_time``) by default, as in ``benchmarks/step_cost.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, load_network
from torch_lstm_optim.meta.outputs import machine_description
from torch_lstm_optim.network import State

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
Cell = Callable[[nn.Linear, Tensor, Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor]]


def in_place_cell(layer: nn.Linear, scale: Tensor, x: Tensor, h: Tensor, c: Tensor,
                  hs: int) -> tuple[Tensor, Tensor]:
    """The cell with one (N, 4H) and two (N, H) new tensors, where the network's makes a (N, F + H), two (N, 4H)
    and ten (N, H); no backward can go through it."""
    weight = (layer.weight * scale[:, None]).t()
    n = x.shape[1]
    gates = torch.addmm(layer.bias * scale, x, weight[:n]).addmm_(h, weight[n:]).sigmoid_()
    i, f, g, o = gates.split(hs, 1)
    c = torch.addcmul(g.mul_(2).sub_(1).mul_(i), f, c)
    return torch.mul(c, 2).sigmoid_().mul_(2).sub_(1).mul_(o), c


def bf16_cell(layer: nn.Linear, scale: Tensor, x: Tensor, h: Tensor, c: Tensor, hs: int) -> tuple[Tensor, Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gates = torch.addmm(layer.bias * scale, torch.cat([x, h], 1), (layer.weight * scale[:, None]).t())
    i, f, g, o = torch.sigmoid(gates.float()).split(hs, 1)
    c = f * c + i * (2 * g - 1)
    return o * (2 * torch.sigmoid(2 * c) - 1), c


def fewer_temporaries_cell(layer: nn.Linear, scale: Tensor, x: Tensor, h: Tensor, c: Tensor,
                           hs: int) -> tuple[Tensor, Tensor]:
    weight = (layer.weight * scale[:, None]).t()
    n = x.shape[1]
    gates = torch.addmm(layer.bias * scale, x, weight[:n]).addmm_(h, weight[n:])
    i, f, g, o = torch.sigmoid(gates).split(hs, 1)
    c = torch.addcmul(torch.addcmul(-i, f, c), i, g, value=2)
    return torch.addcmul(-o, o, torch.sigmoid(2 * c), value=2), c


VARIANTS: dict[str, Cell | None] = {"network": None, "in-place": in_place_cell, "bf16-matmul": bf16_cell,
                                    "fewer-temporaries": fewer_temporaries_cell}


def rule_with(network: CoordinatewiseLSTM, cell: Cell) -> Callable[..., tuple[Tensor, State]]:
    """The network's rule with its LSTM layers computed by ``cell``."""
    def step(grad: Tensor, state: State, param_rms: Tensor | None = None) -> tuple[Tensor, State]:
        x, new_state = network.features(grad, state, param_rms)
        hidden = x
        for index, layer in enumerate(network.layers):
            hidden, c = cell(layer, network.gate_scale, hidden, state[f"h{index}"], state[f"c{index}"],
                             network.config.hidden_size)
            new_state[f"h{index}"], new_state[f"c{index}"] = hidden, c
        return network._output(network._head(hidden, x), x, new_state), new_state
    return step


def cpu_has_bf16() -> bool:
    """Native bfloat16 matmuls: ``avx512_bf16`` or ``amx_bf16`` among the CPU's flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags() -> list[str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted({f for f in text.split() if f.startswith(("avx512_bf16", "amx"))})


def deviation(ours: Tensor, reference: Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    return float((ours.double() - reference.double()).abs().max() / reference.double().abs().max().clamp_min(1e-30))


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int,
                clock: Callable[[], float]) -> dict[str, list[float]]:
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            contenders[name]()
            times[name].append(clock() - start)
    return times


def summarise(times: dict[str, list[float]], reference: str) -> dict[str, dict[str, float]]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = {}
    for name, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        rows[name] = {"median_ms": medians[name] * 1e3, "ratio": medians[name] / medians[reference],
                      "iqr_over_median": (q3 - q1) / medians[name], "times_ms": [t * 1e3 for t in values]}
    return rows


def measure_cells(args: argparse.Namespace, clock: Callable[[], float]) -> dict[str, object]:
    network = load_network(args.weights)
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(args.coordinates, generator=generator) * 10 ** torch.empty(args.coordinates).uniform_(
        -4, 0, generator=generator) for _ in range(args.warmup_steps + 1)]
    # a rule that reads its parameter's size gets one: a parameter of rms 0.1 (its cost does not depend on the value)
    param_rms = torch.full((args.coordinates,), 0.1) if network.config.param_scale_feature else None
    with torch.no_grad():
        state = network.init_state(grads[0])
        for grad in grads[:-1]:
            _, state = network.step(grad, state, param_rms)
        grad = grads[-1]
        variants = dict(VARIANTS)
        skipped = None
        if not cpu_has_bf16():
            del variants["bf16-matmul"]
            skipped = "bf16-matmul skipped: this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag)"
        rules = {name: network.step if cell is None else rule_with(network, cell) for name, cell in variants.items()}
        with torch.enable_grad():  # the differentiable path defines the rule
            expected_update, expected_state = network.step(grad, state, param_rms)
        differences = {}
        for name, rule in rules.items():
            update, new_state = rule(grad, state, param_rms)
            differences[name] = max([deviation(update, expected_update)]
                                    + [deviation(new_state[k], expected_state[k]) for k in expected_state])
        times = interleaved({name: (lambda rule=rule: rule(grad, state, param_rms)) for name, rule in rules.items()},
                            args.repeats, clock)
    rows = summarise(times, "network")
    for name, row in rows.items():
        row["max_relative_difference"] = differences[name]
    return {"mode": "cells", "coordinates": args.coordinates, "config": network.config.to_dict(), "rows": rows,
            "skipped": skipped}


def measure_chunks(args: argparse.Namespace, clock: Callable[[], float]) -> dict[str, object]:
    """``LSTMOptimizer.step()`` at each chunk size, with the rule's LSTM layers computed by each of ``--variants``:
    one model and optimizer per variant (its network's ``step`` replaced by the variant), whose ``chunk_size`` is
    set before each step."""
    width = max(1, round(math.sqrt(args.size / 4)))
    chunks = [int(c) for c in args.chunk_sizes.split(",")]
    variants = args.variants.split(",")
    steps: dict[str, Callable[[], None]] = {}
    numel = 0
    for variant in variants:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
        numel = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        network = load_network(args.weights)
        if VARIANTS[variant] is not None:
            network.step = rule_with(network, VARIANTS[variant])
        optimizer = LSTMOptimizer(model.parameters(), network)
        optimizer.step()  # the lazy state
        for chunk in chunks:
            def step(optimizer: LSTMOptimizer = optimizer, chunk: int = chunk) -> None:
                optimizer.chunk_size = chunk
                optimizer.step()
            step()  # untimed: the allocator's blocks of that size
            steps[f"{variant} {chunk}" if len(variants) > 1 else str(chunk)] = step
    times = interleaved(steps, args.repeats, clock)
    reference = next((name for name in steps if name.endswith(" 2048") or name == "2048"), next(iter(steps)))
    return {"mode": "chunks", "params": numel, "rows": summarise(times, reference), "reference": reference}


def print_table(report: dict[str, object]) -> None:
    print(f"\n{report['machine']}; bf16 flags {report['cpu_bf16_flags'] or 'none'}; {report['threads']} thread(s); "
          f"{report['clock']} time, median of {report['repeats']} interleaved rounds; {report['date']}; load "
          f"average {report['load_average_before']:.1f} before, {report['load_average_after']:.1f} after\n")
    if report["mode"] == "cells":
        print(f"one chunk of {report['coordinates']:,} coordinates\n")
        print("| variant | median ms | x network | IQR / median | max difference / magnitude |")
        print("|---|---:|---:|---:|---:|")
        for name, row in report["rows"].items():
            print(f"| {name} | {row['median_ms']:.3f} | {row['ratio']:.3f} | {row['iqr_over_median']:.1%} | "
                  f"{row['max_relative_difference']:.1e} |")
        if report["skipped"]:
            print(f"\n{report['skipped']}")
    else:
        print(f"LSTMOptimizer.step() of {report['params']:,} parameters\n")
        print(f"| chunk_size | median ms | x {report['reference']} | IQR / median |")
        print("|---:|---:|---:|---:|")
        for name, row in report["rows"].items():
            print(f"| {name} | {row['median_ms']:.1f} | {row['ratio']:.3f} | {row['iqr_over_median']:.1%} |")


def parse_size(text: str) -> int:
    scale = {"k": 10**3, "m": 10**6}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="the rule's weights (default: the default weights)")
    parser.add_argument("--coordinates", type=int, default=2048, help="coordinates of the chunk the cells run on "
                        "(the CPU's default chunk_size)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps of the rule before the timed one")
    parser.add_argument("--chunk-sizes", help="time LSTMOptimizer.step() at these chunk sizes instead of the cells")
    parser.add_argument("--size", default="1M", help="parameters of the model for --chunk-sizes")
    parser.add_argument("--variants", default="network",
                        help=f"with --chunk-sizes: comma-separated variants of the cell, of {list(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results (every timing) to this file")
    args = parser.parse_args(argv)
    if args.repeats < 4:
        parser.error("--repeats must be >= 4 (the spread is an interquartile range)")
    args.size = parse_size(args.size)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}, expected some of {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {
        "command": " ".join(["python benchmarks/step_variants.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(), "cpu_bf16_flags": cpu_flags(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "clock": args.clock, "repeats": args.repeats,
        "date": datetime.date.today().isoformat(), "load_average_before": os.getloadavg()[0]}
    clock = CLOCKS[args.clock]
    report.update(measure_chunks(args, clock) if args.chunk_sizes else measure_cells(args, clock))
    report["load_average_after"] = os.getloadavg()[0]
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
