"""``LSTMOptimizer``: a ``torch.optim.Optimizer`` that applies a coordinatewise LSTM's update to every parameter.

``p <- p + lr * m(g)`` where ``m`` is :meth:`CoordinatewiseLSTM.step`, the same rule the meta-trainer unrolls.
All coordinates of a step (every parameter of every group with the same settings) are flattened into one batch
and fed to the network in chunks of at most ``chunk_size`` coordinates, so the transient memory of a step is
bounded by the chunk, not by the model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from .network import CoordinatewiseLSTM, State, state_dtype, state_names
from .weights import load_network


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or inf and the optimizer was asked to raise (``nonfinite="raise"``)."""


@dataclass
class _Segment:
    """Coordinates ``[start, stop)`` of one parameter, as they enter a chunk."""

    flat_param: Tensor
    grad: Tensor
    state: dict[str, Any]
    start: int
    stop: int


class LSTMOptimizer(Optimizer):
    """The learned optimizer of Andrychowicz et al. (2016), as a drop-in ``torch.optim.Optimizer``.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        weights: a :class:`CoordinatewiseLSTM`, a bundled name, a folder with ``config.json`` +
            ``model.safetensors``, or a hub repo id. ``None`` picks the bundled default.
        lr: multiplies the network's update (1.0 is the rule as meta-trained), so lr schedulers work as usual.
        weight_decay: L2 penalty added to the gradient before the network sees it.
        maximize: maximise the objective instead of minimising it.
        chunk_size: most coordinates fed to the network at once; bounds a step's transient memory.
            ``None`` picks :func:`default_chunk_size` for the parameters' device.
        state_dtype: dtype of the per-coordinate state (float32; bfloat16 halves its memory).
        nonfinite: ``"skip"`` leaves coordinates whose gradient is NaN/inf (their parameter AND state)
            unchanged, counts them in ``nonfinite_count`` and warns once; ``"raise"`` raises
            :class:`NonFiniteGradientError` naming the parameter before anything changes.
        revision: hub revision (branch, tag or commit) when ``weights`` is a hub repo id.
        compile: run the update rule as ``torch.compile(network.step, dynamic=True)``: the same math, fused,
            with updates equal to eager within float rounding. On CPU steps are 1.2-1.75x faster from 10k to 1M
            parameters, mostly because fewer temporaries are faulted in as fresh pages (1.1x where the allocator
            keeps its memory; README "Speed and memory"); the first step pays the compilation (about 10 s).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 weights: CoordinatewiseLSTM | str | Path | None = None, *, lr: float = 1.0,
                 weight_decay: float = 0.0, maximize: bool = False, chunk_size: int | None = None,
                 state_dtype: torch.dtype = torch.float32, nonfinite: str = "skip",
                 revision: str | None = None, compile: bool = False) -> None:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr!r} (must be a number >= 0)")
        if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be a number >= 0)")
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                       or chunk_size < 1):
            raise ValueError(f"Invalid chunk_size: {chunk_size!r} (must be a positive int or None)")
        if state_dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r} (must be a floating dtype)")
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"Invalid nonfinite: {nonfinite!r} (must be 'skip' or 'raise')")
        if not isinstance(compile, bool):
            raise ValueError(f"Invalid compile: {compile!r} (must be True or False)")
        if isinstance(weights, CoordinatewiseLSTM):
            self.network = weights
        else:
            self.network = load_network(weights, revision=revision)
        if state_dtype == torch.float16 and self.network.config.preprocessing == "scale_free":
            raise ValueError("Invalid state_dtype: torch.float16 cannot hold the scale_free feature accumulators "
                             "(an EMA of g^2 overflows float16's range of 65504); use torch.bfloat16 or torch.float32")
        self.chunk_size = chunk_size
        self.state_dtype = state_dtype
        self.nonfinite = nonfinite
        self.nonfinite_count = 0
        self.compile = compile
        self._networks: dict[torch.device, CoordinatewiseLSTM] = {}
        self._rules: dict[torch.device, Callable[[Tensor, State], tuple[Tensor, State]]] = {}
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize))

    def _network_on(self, device: torch.device) -> CoordinatewiseLSTM:
        if device not in self._networks:
            on_device = next(self.network.parameters()).device == device
            self._networks[device] = self.network if on_device else copy.deepcopy(self.network).to(device)
        return self._networks[device]

    def _rule_on(self, device: torch.device) -> Callable[[Tensor, State], tuple[Tensor, State]]:
        """The update rule for coordinates on ``device``: the network's ``step``, compiled once if ``compile``."""
        if device not in self._rules:
            step = self._network_on(device).step
            self._rules[device] = torch.compile(step, dynamic=True) if self.compile else step
        return self._rules[device]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Apply one update to every parameter with a gradient; return ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        for group, params in groups:
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"LSTMOptimizer does not support sparse gradients (parameter of shape "
                                       f"{tuple(p.shape)}); use a dense embedding or another optimizer for it")
        if self.nonfinite == "raise":
            self._check_finite(groups)
        for group, params in groups:
            by_device: dict[torch.device, list[Tensor]] = {}
            for p in params:
                by_device.setdefault(p.device, []).append(p)
            for device, device_params in by_device.items():
                self._update(group, device_params, self._network_on(device))
        return loss

    def _check_finite(self, groups: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        for group_index, (_, params) in enumerate(groups):
            for p in params:
                if not torch.isfinite(p.grad).all():
                    group = self.param_groups[group_index]
                    index = next(i for i, q in enumerate(group["params"]) if q is p)
                    # Names exist when the optimizer was built from ``model.named_parameters()``.
                    name = f" {group['param_names'][index]!r}" if "param_names" in group else ""
                    raise NonFiniteGradientError(
                        f"non-finite gradient in parameter{name} (param group {group_index}, parameter {index}, "
                        f"shape {tuple(p.shape)}); nothing was updated")

    def _update(self, group: dict[str, Any], params: list[Tensor], network: CoordinatewiseLSTM) -> None:
        """Flatten the group's coordinates, run them through the network chunk by chunk, write back in place.

        A DTensor parameter (FSDP2's ``fully_shard``) is updated through its local shard: each process steps the
        coordinates it holds, with their state (:func:`_sharded_like`), and no communication.
        """
        segments, copies = [], []
        for p in params:
            local = _local(p)
            grad = _local(p.grad).reshape(-1)
            if group["maximize"]:
                grad = -grad
            if group["weight_decay"]:
                grad = grad.add(local.reshape(-1), alpha=group["weight_decay"])
            state = self.state[p]
            if not state:
                state["step"] = 0
                fresh = network.init_state(grad, self.state_dtype)
                state.update(_sharded_like(p, fresh) if isinstance(p, DTensor) else fresh)
            state["step"] += 1
            flat = local.view(-1) if local.is_contiguous() else local.contiguous().view(-1)
            if not local.is_contiguous():
                copies.append((local, flat))
            segments.append(_Segment(flat, grad, _local_coordinates(state, p), 0, local.numel()))
        for chunk in _chunks(segments, self.chunk_size or default_chunk_size(params[0].device)):
            self._apply_chunk(chunk, network, group["lr"])
        for local, flat in copies:
            local.copy_(flat.view_as(local))

    def _apply_chunk(self, chunk: list[_Segment], network: CoordinatewiseLSTM, lr: float) -> None:
        names = state_names(network.config)
        grad = _cat([s.grad[s.start:s.stop] for s in chunk])
        state = {k: _cat([s.state[k][s.start:s.stop] for s in chunk]) for k in names}
        finite = torch.isfinite(grad)
        all_finite = bool(finite.all())
        if not all_finite:
            grad = torch.where(finite, grad, 0.0)
        update, new_state = self._rule_on(grad.device)(grad, state)
        if not all_finite:
            self._count_nonfinite(int((~finite).sum()))
            update = torch.where(finite, update, 0.0)
            # (N, H) LSTM states need an (N, 1) mask, the (N,) feature accumulators of scale_free an (N,) one.
            new_state = {k: torch.where(finite.view(-1, *[1] * (v.dim() - 1)), v, state[k])
                         for k, v in new_state.items()}
        offset = 0
        for s in chunk:
            n = s.stop - s.start
            for k in names:
                s.state[k][s.start:s.stop].copy_(new_state[k][offset:offset + n])
            s.flat_param[s.start:s.stop].add_(update[offset:offset + n].to(s.flat_param.dtype), alpha=lr)
            offset += n

    def _count_nonfinite(self, count: int) -> None:
        if self.nonfinite_count == 0:
            warnings.warn(f"LSTMOptimizer: {count} gradient coordinate(s) were NaN or inf; their parameters and "
                          "state were left unchanged (counted in optimizer.nonfinite_count; pass "
                          "nonfinite='raise' to stop instead). This warning is shown once.", RuntimeWarning)
        self.nonfinite_count += count

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state dict plus ``"network"``: the config and source of the network the state belongs to.

        ``source`` (weights name, folder and hub commit hash; ``None`` for a network built in code) traces a run to
        the exact weights. Only the config is checked on load, so the same weights loaded from elsewhere fit.
        """
        state_dict = super().state_dict()
        source = getattr(self.network, "source", None)
        state_dict["network"] = {"config": self.network.config.to_dict(), "state_dtype": str(self.state_dtype),
                                 "source": None if source is None else asdict(source)}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict, after checking all of it: on any mismatch nothing is changed.

        The per-coordinate state is restored exactly (torch's base class would cast it to each parameter's dtype,
        which for bfloat16 parameters would lose the float32 state's bits). ``"network"`` may be missing, as in what
        ``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` passes on: then the network's config is
        not compared, only the names and shapes of the state it must fit.
        """
        self._validate_state_dict(state_dict)
        state_dict = {k: v for k, v in state_dict.items() if k != "network"}
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is not None:
                self.state[p] = {k: (v.to(device=p.device, dtype=state_dtype(k, self.state_dtype), copy=True)
                                     if isinstance(v, Tensor) else v) for k, v in saved.items()}

    def _validate_state_dict(self, state_dict: dict[str, Any]) -> None:
        from .weights import StateDictError

        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise StateDictError("not an optimizer state dict: expected keys 'state' and 'param_groups'")
        # torch.distributed.checkpoint's get/set_optimizer_state_dict keep only "state" and "param_groups": without
        # "network" the config cannot be compared, but the names and shapes of the state entries still are, below.
        network = state_dict.get("network")
        if "network" in state_dict and (not isinstance(network, dict)
                                        or network.get("config") != self.network.config.to_dict()):
            found = network.get("config") if isinstance(network, dict) else None
            raise StateDictError(f"state dict was made for another network: its config is {found}, this "
                                 f"optimizer's network has {self.network.config.to_dict()}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(ours["params"]) for g, ours in zip(groups, self.param_groups)):
            raise StateDictError(f"state dict has param groups of sizes {[len(g['params']) for g in groups]}, "
                                 f"this optimizer has {[len(g['params']) for g in self.param_groups]}")
        names = set(state_names(self.network.config))
        saved_ids = chain.from_iterable(g["params"] for g in groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for index, (saved_id, p) in enumerate(zip(saved_ids, params)):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            where = f"state of parameter {index} (shape {tuple(p.shape)})"
            if set(saved) != names | {"step"}:
                raise StateDictError(f"{where} has keys {sorted(saved)}, expected {sorted(names | {'step'})}")
            if not isinstance(saved["step"], int) or saved["step"] < 0:
                raise StateDictError(f"{where} has step {saved['step']!r}, expected an int >= 0")
            # A DTensor parameter's state has the parameter's shape (see _sharded_like), a plain one's is flat.
            coordinates = tuple(p.shape) if isinstance(p, DTensor) else (p.numel(),)
            for k in sorted(names):
                v = saved[k]
                shape = (*coordinates, self.network.config.hidden_size) if k[0] in "hc" else coordinates
                if not isinstance(v, Tensor) or tuple(v.shape) != shape:
                    found = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise StateDictError(f"{where}: entry {k!r} has shape {found}, expected {shape}")
                if isinstance(v, DTensor) != isinstance(p, DTensor):
                    raise StateDictError(f"{where}: entry {k!r} is a {type(v).__name__} but the parameter is a "
                                         f"{type(p).__name__}; load sharded (FSDP2) state with torch.distributed."
                                         "checkpoint.state_dict.set_optimizer_state_dict")
                if not v.is_floating_point() or not torch.isfinite(v).all():
                    raise StateDictError(f"{where}: entry {k!r} is not a finite floating-point tensor")


def default_chunk_size(device: torch.device) -> int:
    """``chunk_size=None``'s choice: 16384 on CPU, 65536 elsewhere.

    On CPU the compute per coordinate is the same from 4096 to 65536 (measured at 1M parameters, results
    bit-identical), while a step's transient memory is 20 MiB at 16384 against 81 MiB at 65536 (20 hidden units),
    and smaller temporaries are more often reused by the C allocator instead of faulted in again as fresh pages
    (``benchmarks/step_cost.py``). On accelerators fewer, larger chunks launch fewer kernels.
    """
    return 16384 if device.type == "cpu" else 65536


def _chunks(segments: list[_Segment], size: int) -> Iterable[list[_Segment]]:
    """Cut parameters into runs of at most ``size`` coordinates; small parameters share a chunk."""
    chunk, filled = [], 0
    for segment in segments:
        start = 0
        while start < segment.stop:
            take = min(size - filled, segment.stop - start)
            chunk.append(_Segment(segment.flat_param, segment.grad, segment.state, start, start + take))
            start, filled = start + take, filled + take
            if filled == size:
                yield chunk
                chunk, filled = [], 0
    if chunk:
        yield chunk


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _local(tensor: Tensor) -> Tensor:
    """What this process computes on: a DTensor's local shard (a view, so writes reach the DTensor), else itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _sharded_like(param: DTensor, state: State) -> State:
    """Fresh state of ``param``'s local shard, as DTensors sharded like ``param``.

    Each tensor takes the parameter's shape (plus ``H`` for ``h``/``c``) and placements, so every process holds
    the state of exactly the coordinates it holds, and ``torch.distributed.checkpoint`` saves, loads and reshards
    it with the parameter. The flat ``(numel, H)`` layout of a plain parameter cannot be sharded that way: FSDP2
    splits dim 0 unevenly (5 rows over 2 processes as 3 + 2), which is not a split of the flattened coordinates.
    """
    local_shape = param.to_local().shape
    sharded = {}
    for name, value in state.items():
        shape = torch.Size((*param.shape, *value.shape[1:]))
        sharded[name] = DTensor.from_local(value.view(*local_shape, *value.shape[1:]), param.device_mesh,
                                           param.placements, shape=shape,
                                           stride=torch.empty(shape, device="meta").stride())
    return sharded


def _local_coordinates(state: dict[str, Any], param: Tensor) -> dict[str, Any]:
    """The state tensors of the coordinates this process steps, flat like the gradient: ``(n, H)`` or ``(n,)``.

    ``state`` itself for a plain parameter; for a DTensor parameter, views of the local shards of its state.
    """
    if not isinstance(param, DTensor):
        return state
    n = param.to_local().numel()
    return {k: v.to_local().view(n, *v.shape[param.dim():]) for k, v in state.items() if isinstance(v, DTensor)}
