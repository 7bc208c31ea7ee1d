"""Nanoseconds per parameter of one ``LSTMOptimizer.step()`` on CUDA, next to ``torch.optim.AdamW(fused=True)``.

    python benchmarks/cuda_step.py                                   # 1M, 10M, 100M parameters
    python benchmarks/cuda_step.py --sizes 10M --chunk-sizes 65536,1048576,4194304 --compile --json out.json

Needs a CUDA device; without one it exits at once with a message saying so (status 2).

For each size, every kind of optimizer gets its own copy of a model of 4 square ``nn.Linear`` layers with about
that many parameters (as ``benchmarks/step_cost.py``) and the same random gradients: ``adamw-fused``
(``torch.optim.AdamW(lr=1e-3, fused=True)``, the reference), ``LSTMOptimizer`` with the default weights (or
``--weights``), and with ``--compile`` also ``LSTMOptimizer(compile=True)``. The contenders are these at each of
``--chunk-sizes`` (``default`` is :func:`default_chunk_size` of CUDA, 65536; compiled: the first one only); the
chunk sizes share one optimizer, whose ``chunk_size`` is set before each step, so memory holds one model's state,
not one per chunk size. Each contender steps ``--warmup`` times untimed (lazy state, compilation, the caching
allocator's first blocks); then the contenders take turns, one step each per round, in a rotating order.
A step's time is wall time from a ``torch.cuda.synchronize()`` before it to one after it: what the
step costs when nothing overlaps it, its kernel launches and host reads included. Reported: the median over the
rounds, in ns per parameter and as a ratio to fused AdamW's median in the same rounds; the peak memory a step needs
above what the model, its gradients and the state hold (``torch.cuda.max_memory_allocated``); and the optimizer
state in bytes per parameter. A size whose contender runs out of memory is reported as such, and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from torch_lstm_optim import LSTMOptimizer
from torch_lstm_optim.optimizer import default_chunk_size

DEVICE = "cuda"
NO_CUDA = ("benchmarks/cuda_step.py needs a CUDA device, and torch sees none (torch.cuda.is_available() is False); "
           "run it on a machine with a GPU and a CUDA build of torch. For CPU step costs use benchmarks/step_cost.py")


def parse_size(text: str) -> int:
    """``"10k"`` -> 10000, ``"1M"`` -> 1000000, ``"2500"`` -> 2500."""
    scale = {"k": 10**3, "m": 10**6}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def make_model(size: int, device: torch.device) -> nn.Module:
    """4 square Linear layers with about ``size`` parameters in all."""
    width = max(1, round(math.sqrt(size / 4)))
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(4)]).to(device)


def make_optimizer(kind: str, model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``"adamw-fused"``, ``"lstm"`` or ``"lstm+compile"``."""
    if kind == "adamw-fused":
        return torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    return LSTMOptimizer(model.parameters(), args.weights, compile=kind == "lstm+compile")


def timed_step(optimizer: torch.optim.Optimizer) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer, numel: int) -> float:
    return sum(v.nbytes for state in optimizer.state.values() for v in state.values()
               if isinstance(v, Tensor)) / numel


def measure_size(size: int, contenders: list[tuple[str, str, int | None]],
                 args: argparse.Namespace) -> dict[str, object]:
    """``contenders``: (name, optimizer kind, chunk size). The chunk sizes of one kind share one optimizer, whose
    ``chunk_size`` is set before each of its steps: the step reads it afresh, and the state stays one model's."""
    device = torch.device(DEVICE)
    optimizers: dict[str, torch.optim.Optimizer | None] = {}
    numel = 0
    for kind in dict.fromkeys(kind for _, kind, _ in contenders):
        model = None
        try:
            torch.manual_seed(0)
            model = make_model(size, device)
            numel = sum(p.numel() for p in model.parameters())
            generator = torch.Generator(device=device).manual_seed(0)  # the same gradients for everyone
            for p in model.parameters():
                p.grad = torch.randn(p.shape, device=device, generator=generator)
            optimizers[kind] = make_optimizer(kind, model, args)
        except torch.OutOfMemoryError:
            optimizers[kind] = model = None
            torch.cuda.empty_cache()
    entries: dict[str, dict[str, object]] = {}
    live: list[tuple[str, Callable[[], float]]] = []
    for name, kind, chunk in contenders:
        optimizer = optimizers[kind]
        if optimizer is None:
            entries[name] = {"error": "out of memory"}
            continue
        step = _step_with_chunk(optimizer, chunk)
        try:
            first = step()
            for _ in range(args.warmup - 1):
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            peak = torch.cuda.max_memory_allocated(device) - before
        except torch.OutOfMemoryError:
            entries[name] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        entries[name] = {"chunk_size": chunk, "first_step_s": first, "peak_extra_mib": peak / 2**20,
                         "state_bytes_per_param": state_bytes_per_parameter(optimizer, numel)}
        live.append((name, step))
    times: dict[str, list[float]] = {name: [] for name, _ in live}
    for round_index in range(args.repeats):
        shift = round_index % max(1, len(live))
        for name, step in live[shift:] + live[:shift]:
            times[name].append(step())
    for name, values in times.items():
        entries[name].update(step_ms=statistics.median(values) * 1e3,
                             ns_per_param=statistics.median(values) / numel * 1e9,
                             times_ms=[t * 1e3 for t in values])
    reference = entries.get("adamw-fused", {}).get("step_ms")
    for entry in entries.values():
        if reference and "step_ms" in entry:
            entry["ratio_to_adamw_fused"] = entry["step_ms"] / reference
    del optimizers, live
    torch.cuda.empty_cache()
    return {"size": size, "params": numel, "results": [{"optimizer": k, **v} for k, v in entries.items()]}


def _step_with_chunk(optimizer: torch.optim.Optimizer, chunk: int | None) -> Callable[[], float]:
    def step() -> float:
        if chunk is not None:
            optimizer.chunk_size = chunk
        return timed_step(optimizer)
    return step


def print_table(report: dict[str, object]) -> None:
    print(f"\n{report['device_name']}; torch {report['torch']}; CUDA {report['cuda']}; TF32 matmuls "
          f"{report['allow_tf32']}; median of {report['repeats']} interleaved steps after {report['warmup']} "
          f"warm-up; {report['date']}\n")
    print("| params | optimizer | step ms | ns/param | x fused AdamW | peak extra MiB | state bytes/param "
          "| first step s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for entry in report["sizes"]:
        for row in entry["results"]:
            if "error" in row:
                print(f"| {entry['params']:,} | {row['optimizer']} | {row['error']} | | | | | |")
                continue
            ratio = row.get("ratio_to_adamw_fused")
            print(f"| {entry['params']:,} | {row['optimizer']} | {row['step_ms']:.2f} | {row['ns_per_param']:.3f} | "
                  f"{'' if ratio is None else f'{ratio:.1f}'} | {row['peak_extra_mib']:.0f} | "
                  f"{row['state_bytes_per_param']:.0f} | {row['first_step_s']:.2f} |")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,100M", help="comma-separated model sizes (k and M suffixes)")
    parser.add_argument("--chunk-sizes", default="default",
                        help="comma-separated chunk_size values of LSTMOptimizer to time ('default': "
                             f"{default_chunk_size(torch.device('cuda'))})")
    parser.add_argument("--compile", action="store_true", help="also time LSTMOptimizer(compile=True)")
    parser.add_argument("--weights", help="LSTMOptimizer's weights (default: the default weights)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (one step of every contender each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each contender first")
    parser.add_argument("--json", type=Path, help="also write the results (every timing) to this file")
    args = parser.parse_args(argv)
    if min(args.repeats, args.warmup) < 1:
        parser.error("--repeats and --warmup must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        raise SystemExit(2)
    chunks = [default_chunk_size(torch.device("cuda")) if c == "default" else int(c)
              for c in args.chunk_sizes.split(",")]
    contenders = [("adamw-fused", "adamw-fused", None), *((f"lstm chunk {c}", "lstm", c) for c in chunks),
                  *([(f"lstm+compile chunk {chunks[0]}", "lstm+compile", chunks[0])] if args.compile else [])]
    report: dict[str, object] = {
        "command": " ".join(["python benchmarks/cuda_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "device_name": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32, "repeats": args.repeats, "warmup": args.warmup,
        "date": datetime.date.today().isoformat(), "sizes": []}
    print(f"timing {[name for name, _, _ in contenders]} on {report['device_name']}", flush=True)
    for size in (parse_size(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        report["sizes"].append(measure_size(size, contenders, args))
        print(f"  {size:,} parameters done in {time.perf_counter() - started:.0f} s", flush=True)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
