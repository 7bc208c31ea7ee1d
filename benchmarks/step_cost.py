"""Cost of one ``LSTMOptimizer.step()`` next to ``torch.optim.Adam(foreach=True)``, measured side by side in one run.

    python benchmarks/step_cost.py                                  # 10k, 100k, 1M, 10M parameters, CPU, 1 thread
    python benchmarks/step_cost.py --sizes 1M --compile --json out.json
    python benchmarks/step_cost.py --device cuda

For each model size (a stack of 4 square ``nn.Linear`` layers with random gradients) every contender gets its own copy
of the model and steps once to warm up (this creates the lazy state, and compiles with ``--compile``); then the
contenders take turns, one step each per round, in a rotating order, so that noise from other processes hits all of
them alike. Reported: the median step time over the rounds, and its ratio to Adam's median in the same run.
On CPU the clock is, by default, the CPU time of this process (``time.process_time``: user + system time of all its
threads, so page faults count): on a shared machine wall time also counts the time slices other processes get.
``--clock wall`` measures latency instead; on CUDA the clock is always wall time, after a synchronize.

The same rounds time the machine's ceilings next to the steps: a plain ``torch.mm`` of the shape of the LSTM's second
gate matmul for one chunk, ``(M, 2H) @ (2H, 4H)``, and a large tensor copy. From the FLOPs and the bytes per coordinate
(counted analytically, see :func:`flops_per_coordinate` and :func:`bytes_per_coordinate`) follow the achieved GFLOP/s
and GB/s, and the fraction of the roofline: the time the step would take at the mm's GFLOP/s or at the copy's GB/s,
whichever is longer, over the measured time. The time of the step's sigmoids and tanhs alone at their measured
throughput on a contiguous ``(M, H)`` tensor is shown too: on CPU that, not the matmul, is what binds. Hence the
``fused bound``: the largest fraction of the roofline that any step built from torch's kernels could reach, even one
fused kernel with no temporaries, because it must still do its FLOPs at the mm's rate and its transcendentals at the
sigmoid's and tanh's (both run on the same vector units, so they add up): roofline time over that sum (or over the
copy time, if longer).

Peak extra memory of a step: on CPU, each size runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (so
glibc hands every large block back to the OS when it is freed, instead of keeping it for reuse where RSS no longer
shows it). There each eager contender in turn builds its model, steps once (the state now exists and is touched),
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), steps again and reports ``VmHWM - VmRSS_before``: the
resident memory the step needed above what the model, its gradients and the optimizer state already held. On CUDA it is
``torch.cuda.max_memory_allocated()`` minus the allocated memory before the step.

Columns of the first table: ``step ms`` the median step time; ``of which system ms`` its kernel (system) CPU time,
mostly page faults of freed and re-touched temporaries (0 on CUDA); ``x Adam`` step ms over Adam's in the same
rounds; ``GFLOP/s`` and ``GB/s`` the step's counted FLOPs and compulsory bytes over its time; ``mm GFLOP/s`` and
``copy GB/s`` the two ceilings; ``of roofline`` the fraction described above; ``sigmoid+tanh ms`` the step's
transcendentals alone at their measured rate; ``fused bound`` the most ``of roofline`` could be (above);
``peak extra MiB`` the peak extra memory (eager contenders only).
The second table gives the per-coordinate counts, the persistent state per parameter and the first (warm-up) step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, NetworkConfig
from torch_lstm_optim.optimizer import default_chunk_size

CONFIGS = {
    "paper": NetworkConfig(),
    "scale_free": NetworkConfig(preprocessing="scale_free", log_rms_feature=True, output="direction_magnitude",
                                output_scale=0.03),
    # the second generation's form (docs/meta-training.md), at the paper's size and at 1 layer of 8 units
    "momentum_mix": NetworkConfig(preprocessing="scale_free", log_step_feature=True, level_feature=True,
                                  output="momentum_mix", output_scale=0.01),
    "momentum_mix_1x8": NetworkConfig(hidden_size=8, num_layers=1, preprocessing="scale_free", log_step_feature=True,
                                      level_feature=True, output="momentum_mix", output_scale=0.01),
    # the third generation's: the parameter's rms as an input (a reduction per parameter) and a warm-up
    "param_scale": NetworkConfig(preprocessing="scale_free", log_step_feature=True, level_feature=True,
                                 param_scale_feature=True, warmup_steps=10, output="momentum_mix", output_scale=0.01),
    # the same with the LSTM run on every 8th step (lstm_every; issue 27's cheaper step)
    "param_scale_every8": NetworkConfig(preprocessing="scale_free", log_step_feature=True, level_feature=True,
                                        param_scale_feature=True, warmup_steps=30, output="momentum_mix",
                                        output_scale=0.01, lstm_every=8),
}
ADAM_BYTES_PER_COORDINATE = 4 + 2 * 4 + 2 * 2 * 4  # read grad; read+write param, exp_avg, exp_avg_sq
COPY_NUMEL = 1 << 25  # 128 MiB of float32: well beyond any last-level cache
MIN_MM_FLOP = 2e8  # repeat small matmuls until one timing holds at least this much work
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def flops_per_coordinate(config: NetworkConfig) -> int:
    """FLOPs of one coordinate's update, counting every elementwise op (transcendentals included) as 1 FLOP.

    With ``F = num_features``, ``H = hidden_size``, ``n_0 = F`` and ``n_l = H`` for the later layers,
    ``K = len(betas)``::

        features:  log_sign  9  (abs, compare, clamp, log, /p, where, sign, where, *e^p)
                   scale_free 14 + 9K + E, E = F - 1 - K extra log features (log rms, log t, level)
                              (clamp; K lerps of 3; g*g and its lerp; t+1; bias correction of v: 6;
                               of each momentum: 4; K+1 divisions by the rms and K+1 clamps; a log per extra)
                              + 14 with the level (lerp 3, bias correction 6, + floor and sqrt 2, max 1,
                               a second log and the difference 2)
        layer l:   8 H (n_l + H)     the fused gate matmul, 2 * 4H * (n_l + H)
                   + 18 H            bias 4H, one sigmoid over the gates 4H, tanh(g) = 2 sigmoid(2g) - 1 2H,
                                     c = f*c + i*tanh(g) 3H, tanh(c) = 2 sigmoid(2c) - 1 4H, h = o * tanh(c) H
        head:      linear 2H + 2     (matmul, bias, * output_scale)
                   direction_magnitude 4 (H + F) + 7   (2 outputs from [h, x], bias 2, clamp, exp, *, *scale,
                                                        the [v > 0] factor)
                   momentum_mix 2 (H + F) O + O + 2K + 5 + 3L, O = K + 2 + L outputs, L = 1 with the level
                                     (outputs from [h, x] and bias; K+1 products and K sums of the mix; clamp,
                                      exp, *, *scale; with the level sigmoid, *, +)
        optimizer: 3                 (finiteness check, lr * update, + param)

    With ``lstm_every`` = N > 1 the layers and the head's outputs run on one step in N (averaged here: divided by
    N, rounded), the mix on every step, plus 3 per step for the check of which coordinates are due.
    """
    h, f = config.hidden_size, config.num_features
    if config.preprocessing == "log_sign":
        features = 9
    else:
        features = 14 + 9 * len(config.betas) + (f - 1 - len(config.betas))
    widths = [f] + [h] * (config.num_layers - 1)
    layers = sum(8 * h * (n + h) + 18 * h for n in widths)
    features += 14 * config.level_feature
    k, outputs = len(config.betas), config.num_outputs
    mix = 2 * k + 5 + 3 * config.level_feature
    head = {"linear": 2 * h + 2, "direction_magnitude": 4 * (h + f) + 7,
            "momentum_mix": 2 * (h + f) * outputs + outputs + mix}[config.output]
    every = config.lstm_every
    if every == 1:
        return features + layers + head + 3
    return features + round((layers + head - mix) / every) + mix + 3 + 3


def transcendentals_per_coordinate(config: NetworkConfig) -> tuple[int, int]:
    """``(sigmoids, tanhs)`` of one coordinate's update in the LSTM layers: 5H and 0 per layer (the rule takes each
    tanh as a sigmoid: :meth:`CoordinatewiseLSTM.step`), averaged over ``lstm_every`` steps."""
    return round(5 * config.hidden_size * config.num_layers / config.lstm_every), 0


def bytes_per_coordinate(config: NetworkConfig, state_bytes: int = 4) -> int:
    """Compulsory memory traffic of one coordinate's update: read the gradient (4 bytes), read and write the
    parameter (2 * 4) and every per-coordinate state value (``2 * state_bytes`` each: h and c of every layer, plus
    scale_free's momenta, second moment and step count, and the level's moment and peak). Temporaries of a chunk are
    not counted: a perfect implementation would keep them in cache. With ``lstm_every`` = N > 1, h and c are read
    and written on one step in N (averaged, rounded), the head's stored outputs read on every step (float32)."""
    lstm = 2 * config.num_layers * config.hidden_size * 2 * state_bytes
    values = 0
    if config.preprocessing == "scale_free":
        values += len(config.betas) + 2 + 2 * config.level_feature
    if config.lstm_every == 1:
        return 4 + 2 * 4 + 2 * state_bytes * values + lstm
    return 4 + 2 * 4 + 2 * state_bytes * values + round((lstm + 4 * config.num_outputs) / config.lstm_every) \
        + 4 * config.num_outputs


def parse_size(text: str) -> int:
    """``"10k"`` -> 10000, ``"1M"`` -> 1000000, ``"2500"`` -> 2500."""
    scale = {"k": 10**3, "m": 10**6}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def make_model(size: int, device: torch.device) -> nn.Module:
    """4 square Linear layers with about ``size`` parameters in all, each with a random gradient."""
    width = max(1, round(math.sqrt(size / 4)))
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)]).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def make_optimizer(kind: str, model: nn.Module, chunk_size: int | None,
                   configs: Mapping[str, NetworkConfig] = CONFIGS) -> torch.optim.Optimizer:
    """``"adam"``, or ``"<config>"`` / ``"<config>+compile"`` (a name of ``configs``) for an LSTMOptimizer with a
    random-weight network."""
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    name, _, compiled = kind.partition("+")
    torch.manual_seed(0)
    network = CoordinatewiseLSTM(configs[name]).to(next(model.parameters()).device)
    return LSTMOptimizer(model.parameters(), network, chunk_size=chunk_size, compile=compiled == "compile")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, clock: Callable[[], float], repeat: int = 1) -> float:
    """Seconds of ``clock`` for one call of ``fn`` (the mean of ``repeat`` back-to-back calls)."""
    synchronize(device)
    start = clock()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (clock() - start) / repeat


def step_timer(optimizer: torch.optim.Optimizer, device: torch.device, clock: Callable[[], float],
               kernel: list[tuple[float, float]]) -> Callable[[], float]:
    """A timer of one step that also appends the step's system CPU seconds and minor page faults to ``kernel``:
    fresh pages for temporaries that the allocator returned to the OS after the previous chunk show up there.
    For a rule whose LSTM runs on one step in N (``lstm_every``), one timing is the mean of N steps in a row: every
    timing then holds exactly one of the LSTM's steps, and the median of timings is the cost of a step on average."""
    cycle = optimizer.network.config.lstm_every if isinstance(optimizer, LSTMOptimizer) else 1

    def run() -> float:
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds = timed(optimizer.step, device, clock, cycle)
        after = resource.getrusage(resource.RUSAGE_SELF)
        kernel.append(((after.ru_stime - before.ru_stime) / cycle, (after.ru_minflt - before.ru_minflt) / cycle))
        return seconds
    return run


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer) -> float:
    """Bytes of every tensor in ``optimizer.state`` over the number of parameters: the persistent cost."""
    numel = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    held = sum(v.nbytes for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor))
    return held / numel


@dataclass
class Ceilings:
    """What the machine reaches on plain kernels, timed in the same rounds as the steps."""

    mm_gflops: float
    copy_gbps: float
    sigmoid_ns: float
    tanh_ns: float


def ceiling_probes(rows: int, hidden: int, device: torch.device,
                   clock: Callable[[], float]) -> dict[str, Callable[[], float]]:
    """Timers (each returns seconds) for the mm of one chunk's gate shape, a large copy, sigmoid and tanh."""
    a = torch.randn(rows, 2 * hidden, device=device)
    b = torch.randn(2 * hidden, 4 * hidden, device=device)
    out = torch.empty(rows, 4 * hidden, device=device)
    mm_repeat = max(1, math.ceil(MIN_MM_FLOP / (2 * rows * 2 * hidden * 4 * hidden)))
    src, dst = torch.randn(COPY_NUMEL, device=device), torch.empty(COPY_NUMEL, device=device)
    x = torch.randn(rows, hidden, device=device)
    y = torch.empty_like(x)
    return {
        "mm": lambda: timed(lambda: torch.mm(a, b, out=out), device, clock, mm_repeat),
        "copy": lambda: timed(lambda: dst.copy_(src), device, clock),
        "sigmoid": lambda: timed(lambda: torch.sigmoid(x, out=y), device, clock, mm_repeat),
        "tanh": lambda: timed(lambda: torch.tanh(x, out=y), device, clock, mm_repeat),
    }


def measure_size(size: int, kinds: list[str], args: argparse.Namespace, device: torch.device,
                 configs: Mapping[str, NetworkConfig] = CONFIGS) -> dict[str, object]:
    """Warm up every contender (``kinds``: ``"adam"`` and names of ``configs``, optionally ``+compile``), then time
    them and the ceilings in interleaved rounds; medians."""
    models = {kind: make_model(size, device) for kind in kinds}
    numel = sum(p.numel() for p in models[kinds[0]].parameters())
    for model in models.values():  # the same parameters and gradients for everyone
        for p, q in zip(model.parameters(), models[kinds[0]].parameters()):
            p.data.copy_(q.data)
            p.grad.copy_(q.grad)
    optimizers = {kind: make_optimizer(kind, models[kind], args.chunk_size, configs) for kind in kinds}
    rows = min(args.chunk_size or default_chunk_size(device), numel)  # the probes' shape: the paper's chunk
    clock = CLOCKS[args.clock]
    probes = ceiling_probes(rows, CONFIGS["paper"].hidden_size, device, clock)
    warmup = {}
    for kind, optimizer in optimizers.items():
        warmup[kind] = timed(optimizer.step, device, clock)  # lazy state (and compilation) happen here
        for _ in range(args.warmup - 1):
            optimizer.step()
    peak: dict[str, float] = {}
    if device.type == "cuda":
        for kind, optimizer in optimizers.items():
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            optimizer.step()
            peak[kind] = torch.cuda.max_memory_allocated(device) - before
    kernel: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    contenders: list[tuple[str, Callable[[], float]]] = [
        *((kind, step_timer(optimizer, device, clock, kernel[kind])) for kind, optimizer in optimizers.items()),
        *probes.items()]
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for round_index in range(args.repeats):
        shift = round_index % len(contenders)
        for name, run in contenders[shift:] + contenders[:shift]:
            times[name].append(run())
    median = {name: statistics.median(values) for name, values in times.items()}
    mm_flop = 2 * rows * (2 * CONFIGS["paper"].hidden_size) * (4 * CONFIGS["paper"].hidden_size)
    ceilings = Ceilings(mm_gflops=mm_flop / median["mm"] / 1e9, copy_gbps=2 * 4 * COPY_NUMEL / median["copy"] / 1e9,
                        sigmoid_ns=median["sigmoid"] / (rows * CONFIGS["paper"].hidden_size) * 1e9,
                        tanh_ns=median["tanh"] / (rows * CONFIGS["paper"].hidden_size) * 1e9)
    if device.type == "cpu" and not args.no_memory:
        peak = memory_in_subprocess([kind for kind in kinds if "+compile" not in kind], size, args)
    results = []
    for kind, optimizer in optimizers.items():
        seconds = median[kind]
        row: dict[str, object] = {
            "optimizer": kind, "params": numel, "step_ms": seconds * 1e3, "ratio_to_adam": seconds / median["adam"],
            "first_step_s": warmup[kind], "times_ms": [t * 1e3 for t in times[kind]],
            "system_ms": statistics.median(t for t, _ in kernel[kind]) * 1e3,
            "page_faults": statistics.median(n for _, n in kernel[kind]),
            "state_bytes_per_param": state_bytes_per_parameter(optimizer),
            "peak_extra_mb": peak[kind] / 2**20 if kind in peak else None}
        if kind == "adam":
            moved = ADAM_BYTES_PER_COORDINATE
        else:
            config = configs[kind.partition("+")[0]]
            moved = bytes_per_coordinate(config)
            flops = flops_per_coordinate(config)
            sigmoids, tanhs = transcendentals_per_coordinate(config)
            roofline = max(flops / ceilings.mm_gflops, moved / ceilings.copy_gbps) * numel / 1e9
            transcendental = numel * (sigmoids * ceilings.sigmoid_ns + tanhs * ceilings.tanh_ns) / 1e9
            fused = max(flops / ceilings.mm_gflops * numel / 1e9 + transcendental,
                        moved / ceilings.copy_gbps * numel / 1e9)
            row.update(flops_per_coord=flops, gflops=flops * numel / seconds / 1e9,
                       roofline_fraction=roofline / seconds, sigmoid_tanh_ms=transcendental * 1e3,
                       fused_bound=roofline / fused)
        row.update(bytes_per_coord=moved, gbps=moved * numel / seconds / 1e9)
        results.append(row)
    return {"size": size, "params": numel, "chunk_rows": rows, "ceilings": vars(ceilings), "results": results}


def memory_in_subprocess(kinds: list[str], size: int, args: argparse.Namespace) -> dict[str, float]:
    """Peak extra resident bytes of one step of each of ``kinds`` on a model of ``size``, in a fresh process."""
    command = [sys.executable, __file__, "--memory-worker", ",".join(kinds), "--sizes", str(size),
               "--threads", str(args.threads), *(["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def memory_worker(kinds: list[str], size: int, chunk_size: int | None) -> dict[str, float]:
    """Run in the subprocess: per contender, one step to create the state, then the peak-RSS rise of a second."""
    peak = {}
    for kind in kinds:
        model = make_model(size, torch.device("cpu"))
        optimizer = make_optimizer(kind, model, chunk_size)
        optimizer.step()
        rss_before = _proc_status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        optimizer.step()
        peak[kind] = (_proc_status_kib("VmHWM") - rss_before) * 1024
        del model, optimizer
    return peak


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no field {field!r}")


def machine() -> str:
    """The CPU model (``lscpu``'s "Model name") or the GPU's name."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores"


def print_tables(report: dict[str, object]) -> None:
    """Markdown tables, ready for the README."""
    print(f"\n{report['machine']}; torch {report['torch']}; {report['threads']} thread(s); device {report['device']}; "
          f"chunk_size {report['chunk_size'] or 'default'}; {report['clock']} time, median of {report['repeats']} "
          f"interleaved steps after {report['warmup']} warm-up; {report['date']}; 1-minute load average "
          f"{report['load_average_before']:.1f} before, {report['load_average_after']:.1f} after\n")
    print("| params | optimizer | step ms | of which system ms | x Adam | GFLOP/s | mm GFLOP/s | GB/s | copy GB/s "
          "| of roofline | sigmoid+tanh ms | fused bound | peak extra MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for entry in report["sizes"]:
        ceilings = entry["ceilings"]
        for row in entry["results"]:
            lstm = row["optimizer"] != "adam"
            peak = "" if row["peak_extra_mb"] is None else f"{row['peak_extra_mb']:.1f}"
            print(f"| {row['params']:,} | {row['optimizer']} | {row['step_ms']:.2f} | {row['system_ms']:.0f} | "
                  f"{row['ratio_to_adam']:.1f} | "
                  + (f"{row['gflops']:.1f} | {ceilings['mm_gflops']:.1f} | " if lstm else "| | ")
                  + f"{row['gbps']:.1f} | {ceilings['copy_gbps']:.1f} | "
                  + (f"{row['roofline_fraction']:.0%} | {row['sigmoid_tanh_ms']:.1f} | {row['fused_bound']:.0%} | "
                     if lstm else "| | | ")
                  + f"{peak} |")
    print("\n| optimizer | FLOP/coordinate | bytes moved/coordinate | sigmoids+tanhs/coordinate "
          "| state bytes/param (fp32) | first step s |")
    print("|---|---:|---:|---:|---:|---:|")
    last = report["sizes"][-1]
    for row in last["results"]:
        name = row["optimizer"]
        counts = "" if name == "adam" else "%d + %d" % transcendentals_per_coordinate(CONFIGS[name.partition("+")[0]])
        print(f"| {name} | {row.get('flops_per_coord', '')} | {row['bytes_per_coord']} | {counts} | "
              f"{row['state_bytes_per_param']:.1f} | {row['first_step_s']:.2f} |")
    ceilings = last["ceilings"]
    print(f"\nAt {last['params']:,} parameters: sigmoid {ceilings['sigmoid_ns']:.2f} ns, "
          f"tanh {ceilings['tanh_ns']:.2f} ns per element (contiguous ({last['chunk_rows']}, 20)).")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10k,100k,1M,10M",
                        help="comma-separated model sizes in parameters (k and M suffixes allowed)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the whole run")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one step of every contender each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each contender before the rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--clock", choices=sorted(CLOCKS),
                        help="what a timing measures: this process's CPU time (default on CPU) or wall time (CUDA)")
    parser.add_argument("--chunk-size", type=int,
                        help="LSTMOptimizer's chunk_size (default: default_chunk_size of the device and each "
                             "network's width)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated network configs to time, of {sorted(CONFIGS)}")
    parser.add_argument("--compile", action="store_true",
                        help="also time LSTMOptimizer(compile=True) for each config (the first step compiles)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (CPU)")
    parser.add_argument("--json", type=Path, help="also write the full results (every timing) to this file")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.repeats, args.warmup, args.threads) < 1 or (args.chunk_size is not None and args.chunk_size < 1):
        parser.error("--repeats, --warmup, --threads and --chunk-size must be >= 1")
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        parser.error(f"--configs: unknown {sorted(unknown)}, expected some of {sorted(CONFIGS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker.split(","), sizes[0], args.chunk_size)))
        return {}
    device = torch.device(args.device)
    args.clock = "wall" if device.type == "cuda" else args.clock or "cpu"
    configs = args.configs.split(",")
    kinds = ["adam", *configs, *(f"{c}+compile" for c in configs if args.compile)]
    report: dict[str, object] = {
        "machine": machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
        "chunk_size": args.chunk_size, "clock": args.clock, "repeats": args.repeats, "warmup": args.warmup,
        "date": datetime.date.today().isoformat(), "load_average_before": os.getloadavg()[0],
        "command": " ".join(["python benchmarks/step_cost.py", *(sys.argv[1:] if argv is None else argv)]), "sizes": []}
    print(f"timing {kinds} with {torch.get_num_threads()} thread(s), chunk_size {args.chunk_size or 'default'}",
          flush=True)
    for size in sizes:
        started = time.perf_counter()
        report["sizes"].append(measure_size(size, kinds, args, device))
        print(f"  {size:,} parameters done in {time.perf_counter() - started:.0f} s", flush=True)
    report["load_average_after"] = os.getloadavg()[0]
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
