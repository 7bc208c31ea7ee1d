"""``LSTMOptimizer``: a ``torch.optim.Optimizer`` that applies a coordinatewise LSTM's update to every parameter.

``p <- p + lr * m(g)`` where ``m`` is :meth:`CoordinatewiseLSTM.step`, the same rule the meta-trainer unrolls.
Each param group may have its own network (``{"params": ..., "weights": ...}``, as in the paper's CIFAR-10 setup:
one LSTM for the convolutions, one for the rest). All coordinates of a step that share a network and a device
(every parameter of every group using it, whatever the group's ``lr``, ``weight_decay`` or ``maximize``) are
flattened into one batch and fed to that network in chunks of at most ``chunk_size`` coordinates, so the transient
memory of a step is bounded by the chunk, not by the model; each other network gets its own calls.
A complex parameter is stepped as torch's own optimizers step it: as the real parameter of its real and imaginary
parts (``torch.view_as_real``), each a coordinate with its own state; a rule that reads its parameter's rms
(``param_scale_feature``) takes it over both parts together.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from .network import (CoordinatewiseLSTM, NetworkConfig, State, lstm_due, param_rms, state_dtype, state_names,
                      state_width)
from .weights import StateDictError, WeightsError, load_network


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
    lr: float | Tensor
    param_rms: Tensor | None  # the whole parameter's rms, for a network with param_scale_feature


CPU_CHUNK_BYTES = 1 << 20  # one chunk's LSTM gates on CPU (default_chunk_size)
# The attributes of LSTMOptimizer that copies and pickles keep besides torch's (see __getstate__).
_PICKLED = ("chunk_size", "state_dtype", "nonfinite", "nonfinite_count", "compile", "_default_weights",
            "_default_revision", "_default", "_loaded", "_group_networks")


class LSTMOptimizer(Optimizer):
    """The learned optimizer of Andrychowicz et al. (2016), as a drop-in ``torch.optim.Optimizer``.

    Args:
        params: parameters or param groups, as for any torch optimizer. A group may name its own network with
            ``"weights"`` (anything ``weights`` takes) and, for a hub repo id, ``"revision"``:
            ``LSTMOptimizer([{"params": convs, "weights": a}, {"params": others, "weights": b}])``. Groups
            without ``"weights"`` use ``weights``. Groups naming the same weights share one network.
        weights: a :class:`CoordinatewiseLSTM`, a bundled name, a folder with ``config.json`` +
            ``model.safetensors``, or a hub repo id. ``None`` picks the bundled default. Loaded only if some
            group has no ``"weights"`` of its own.
        lr: multiplies the network's update (1.0 is the rule as meta-trained), so lr schedulers work as usual.
            A 0-dim or one-element Tensor works as in torch's optimizers (for ``torch.compile``d steps, or a
            schedule updated in place): the step multiplies by it on the device, without reading it on the host.
        weight_decay: L2 penalty added to the gradient before the network sees it.
        maximize: maximise the objective instead of minimising it.
        chunk_size: most coordinates fed to the network at once; bounds a step's transient memory.
            ``None`` picks :func:`default_chunk_size` for the parameters' device and the network's width.
        state_dtype: dtype of the per-coordinate state (float32; bfloat16 halves its memory).
        nonfinite: ``"skip"`` leaves coordinates whose gradient is NaN/inf (their parameter AND state)
            unchanged, counts them in ``nonfinite_count`` and warns once; ``"raise"`` raises
            :class:`NonFiniteGradientError` naming the parameter before anything changes.
        revision: hub revision (branch, tag or commit) when ``weights`` is a hub repo id.
        compile: run the update rule as ``torch.compile(network.step, dynamic=True)``: the same math, fused,
            with updates equal to eager within float rounding. On CPU steps are 1.1-1.3x faster from 10k to 1M
            parameters (docs/performance.md); the first step pays the compilation (about 10 s).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 weights: CoordinatewiseLSTM | str | Path | None = None, *, lr: float | Tensor = 1.0,
                 weight_decay: float = 0.0, maximize: bool = False, chunk_size: int | None = None,
                 state_dtype: torch.dtype = torch.float32, nonfinite: str = "skip",
                 revision: str | None = None, compile: bool = False) -> None:
        if isinstance(lr, Tensor):
            # As torch's optimizers (torch/optim/adam.py, sgd.py): one element, whatever the shape.
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
            if lr.is_complex() or lr.dtype == torch.bool or not lr >= 0:  # one host read, at construction only
                raise ValueError(f"Invalid learning rate: {lr!r} (must be a number >= 0)")
        elif not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr >= 0:
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
        self.chunk_size = chunk_size
        self.state_dtype = state_dtype
        self.nonfinite = nonfinite
        self.nonfinite_count = 0
        self.compile = compile
        self._default_weights, self._default_revision = weights, revision
        self._default: CoordinatewiseLSTM | None = None
        self._loaded: dict[tuple[str, str | None], CoordinatewiseLSTM] = {}
        # The network of each param group, aligned with ``self.param_groups`` (not kept in the group dicts, whose
        # entries go into ``state_dict()``; a network is no state-dict value).
        self._group_networks: list[CoordinatewiseLSTM] = []
        self._networks: dict[tuple[int, torch.device], CoordinatewiseLSTM] = {}
        self._rules: dict[tuple[int, torch.device], Callable[..., tuple[Tensor, State]]] = {}
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize))

    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and pickling keep: torch's entries (defaults, state, groups) plus this optimizer's
        settings and networks, without which a copy could not step. The caches of networks moved to a device and
        of compiled rules are not kept: the copy rebuilds them on its first step."""
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in _PICKLED}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # also called by load_state_dict, with torch's entries only: keep the caches
        self.__dict__.setdefault("_networks", {})
        self.__dict__.setdefault("_rules", {})

    @property
    def network(self) -> CoordinatewiseLSTM:
        """The network of groups without ``"weights"`` of their own: the constructor's ``weights``."""
        if self._default is None:
            self._default = self._load(self._default_weights, self._default_revision)
        return self._default

    def network_of(self, group_index: int) -> CoordinatewiseLSTM:
        """The network that steps the parameters of ``self.param_groups[group_index]``."""
        return self._group_networks[group_index]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group as torch does; its ``"weights"`` (and ``"revision"``) pick its network, else the default."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param group must be a dict, found {type(param_group).__name__}")
        group = dict(param_group)
        weights, revision = group.pop("weights", None), group.pop("revision", None)
        if weights is None and revision is not None:
            raise ValueError(f"param group {len(self.param_groups)} has a 'revision' but no 'weights'")
        try:
            network = self.network if weights is None else self._load(weights, revision)
        except WeightsError as error:
            if weights is None:
                raise
            raise WeightsError(f"param group {len(self.param_groups)}: {error}") from None
        super().add_param_group(group)
        self._group_networks.append(network)

    def _load(self, weights: CoordinatewiseLSTM | str | Path | None, revision: str | None) -> CoordinatewiseLSTM:
        """Resolve ``weights`` to a network; the same name (and revision) gives the same network object."""
        if isinstance(weights, CoordinatewiseLSTM):
            network = weights
        else:
            key = (str(weights) if isinstance(weights, (str, Path)) else repr(weights), revision)
            if key not in self._loaded:
                self._loaded[key] = load_network(weights, revision=revision)
            network = self._loaded[key]
        if self.state_dtype == torch.float16 and network.config.preprocessing == "scale_free":
            raise ValueError("Invalid state_dtype: torch.float16 cannot hold the scale_free feature accumulators "
                             "(an EMA of g^2 overflows float16's range of 65504); use torch.bfloat16 or torch.float32")
        return network

    def _network_on(self, network: CoordinatewiseLSTM, device: torch.device) -> CoordinatewiseLSTM:
        key = (id(network), device)
        if key not in self._networks:
            on_device = next(network.parameters()).device == device
            self._networks[key] = network if on_device else copy.deepcopy(network).to(device)
        return self._networks[key]

    def _rule_on(self, network: CoordinatewiseLSTM,
                 device: torch.device) -> Callable[..., tuple[Tensor, State]]:
        """The update rule for coordinates on ``device``: the network's ``step``, compiled once if ``compile``."""
        key = (id(network), device)
        if key not in self._rules:
            step = self._network_on(network, device).step
            self._rules[key] = torch.compile(step, dynamic=True) if self.compile else step
        return self._rules[key]

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
                if p.is_complex() and isinstance(p, DTensor):
                    raise RuntimeError(f"LSTMOptimizer does not support complex sharded (DTensor) parameters "
                                       f"(parameter of shape {tuple(p.shape)}); shard its torch.view_as_real instead")
        if self.nonfinite == "raise":
            self._check_finite(groups)
        # One batch per (network, device): groups sharing a network are stepped together.
        batches: dict[tuple[int, torch.device], tuple[CoordinatewiseLSTM, list[tuple[dict[str, Any], Tensor]]]] = {}
        for network, (group, params) in zip(self._group_networks, groups):
            for p in params:
                batches.setdefault((id(network), p.device), (network, []))[1].append((group, p))
        for (_, device), (network, members) in batches.items():
            self._update(members, network, device)
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

    def _update(self, members: list[tuple[dict[str, Any], Tensor]], network: CoordinatewiseLSTM,
                device: torch.device) -> None:
        """Flatten the coordinates of ``members`` (group, parameter), all stepped by ``network`` on ``device``, run
        them through it chunk by chunk, and write back in place; each parameter with its group's settings.

        A DTensor parameter (FSDP2's ``fully_shard``) is updated through its local shard: each process steps the
        coordinates it holds, with their state (:func:`_sharded_like`), and no communication.
        """
        rule, network = self._rule_on(network, device), self._network_on(network, device)
        segments, copies = [], []
        for group, p in members:
            local = _real(_local(p))
            grad = _real(_local(p.grad)).reshape(-1)
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
            segments.append(_Segment(flat, grad, _local_coordinates(state, p), 0, local.numel(),
                                     _lr_on(group["lr"], device), _param_rms_of(p, network.config)))
        # The steps between the LSTM's take larger chunks (default_chunk_size), judged by the optimizer's step count.
        size = self.chunk_size or default_chunk_size(
            device, network.config, any(lstm_due(network.config, self.state[p]["step"]) for _, p in members))
        for chunk in _chunks(segments, size):
            self._apply_chunk(chunk, network, rule)
        for local, flat in copies:
            local.copy_(flat.view_as(local))

    def _apply_chunk(self, chunk: list[_Segment], network: CoordinatewiseLSTM,
                     rule: Callable[..., tuple[Tensor, State]]) -> None:
        names = state_names(network.config)
        grad = _cat([s.grad[s.start:s.stop] for s in chunk])
        state = {k: _cat([s.state[k][s.start:s.stop] for s in chunk]) for k in names}
        finite = torch.isfinite(grad)
        all_finite = bool(finite.all())
        if not all_finite:
            grad = torch.where(finite, grad, 0.0)
        rms = None if chunk[0].param_rms is None else _cat([s.param_rms.expand(s.stop - s.start) for s in chunk])
        update, new_state = rule(grad, state, rms)
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
                if new_state[k] is not state[k]:  # the rule returns what it left unchanged (the LSTM's skipped steps)
                    s.state[k][s.start:s.stop].copy_(new_state[k][offset:offset + n])
            part = update[offset:offset + n].to(s.flat_param.dtype)
            if isinstance(s.lr, Tensor):  # multiplied on the device: no host read of the lr
                s.flat_param[s.start:s.stop].add_(part * s.lr)
            else:
                s.flat_param[s.start:s.stop].add_(part, alpha=s.lr)
            offset += n

    def _count_nonfinite(self, count: int) -> None:
        if self.nonfinite_count == 0:
            warnings.warn(f"LSTMOptimizer: {count} gradient coordinate(s) were NaN or inf; their parameters and "
                          "state were left unchanged (counted in optimizer.nonfinite_count; pass "
                          "nonfinite='raise' to stop instead). This warning is shown once.", RuntimeWarning)
        self.nonfinite_count += count

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state dict plus ``"network"``: the networks the state belongs to.

        ``"network"`` holds ``"config"``, ``"source"`` and ``"state_dtype"`` of param group 0's network (for a
        single network, *the* network, as before per-group networks existed) and ``"groups"``: one
        ``{"config", "source"}`` per param group. ``source`` (weights name, folder and hub commit hash; ``None``
        for a network built in code) traces a run to the exact weights. Only configs are checked on load, so the
        same weights loaded from elsewhere fit.
        """
        state_dict = super().state_dict()
        groups = [_network_record(network) for network in self._group_networks]
        state_dict["network"] = {**groups[0], "state_dtype": str(self.state_dtype), "groups": groups}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict, after checking all of it: on any mismatch nothing is changed.

        The per-coordinate state is restored exactly (torch's base class would cast it to each parameter's dtype,
        which for bfloat16 parameters would lose the float32 state's bits). ``"network"`` may be missing, as in what
        ``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` passes on: then the networks' configs
        are not compared, only the names and shapes of the state they must fit. A ``"network"`` without
        ``"groups"`` (saved by a version without per-group networks) is compared with every group's network.
        """
        # torch runs the load hooks inside its load_state_dict; they run here around it instead, so that what is
        # checked and restored exactly is what the pre-hooks return, and the post-hooks see the restored state.
        state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        self._validate_state_dict(state_dict)
        state_dict = {k: v for k, v in state_dict.items() if k != "network"}
        hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = hooks
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is not None:
                self.state[p] = {k: (v.to(device=p.device, dtype=state_dtype(k, self.state_dtype), copy=True)
                                     if isinstance(v, Tensor) else v) for k, v in saved.items()}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _validate_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise StateDictError("not an optimizer state dict: expected keys 'state' and 'param_groups'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(ours["params"]) for g, ours in zip(groups, self.param_groups)):
            raise StateDictError(f"state dict has param groups of sizes {[len(g['params']) for g in groups]}, "
                                 f"this optimizer has {[len(g['params']) for g in self.param_groups]}")
        # torch.distributed.checkpoint's get/set_optimizer_state_dict keep only "state" and "param_groups": without
        # "network" the configs cannot be compared, but the names and shapes of the state entries still are, below.
        if "network" in state_dict:
            self._check_networks(state_dict["network"])
        index = 0
        for group_index, (saved_group, group) in enumerate(zip(groups, self.param_groups)):
            config = self._group_networks[group_index].config
            names = set(state_names(config))
            for saved_id, p in zip(saved_group["params"], group["params"]):
                saved = state_dict["state"].get(saved_id)
                where = f"state of parameter {index} (shape {tuple(p.shape)}, param group {group_index})"
                index += 1
                if saved is not None:
                    _check_entry(saved, p, names, config, where)

    def _check_networks(self, record: object) -> None:
        """Compare the state dict's ``"network"`` record with each group's network; raise naming the group."""
        ours = [network.config.to_dict() for network in self._group_networks]
        if not isinstance(record, dict):
            raise StateDictError(f"state dict entry 'network' must be a dict, found {type(record).__name__}")
        if "groups" in record:
            saved = record["groups"]
            if not isinstance(saved, list) or len(saved) != len(ours):
                found = len(saved) if isinstance(saved, list) else type(saved).__name__
                raise StateDictError(f"state dict's 'network' records {found} param groups' networks, this "
                                     f"optimizer has {len(ours)} param groups")
            saved = [g.get("config") if isinstance(g, dict) else None for g in saved]
        else:  # a state dict from before per-group networks: one network for every group
            saved = [record.get("config")] * len(ours)
        for group_index, (found, expected) in enumerate(zip(saved, ours)):
            if found != expected:
                raise StateDictError(f"param group {group_index}: state dict was made for another network: its "
                                     f"config is {found}, this group's network has {expected}")


def _network_record(network: CoordinatewiseLSTM) -> dict[str, Any]:
    source = getattr(network, "source", None)
    return {"config": network.config.to_dict(), "source": None if source is None else asdict(source)}


def _check_entry(saved: dict[str, Any], p: Tensor, names: set[str], config: NetworkConfig, where: str) -> None:
    """Check one parameter's saved state against the network that steps it; raise :class:`StateDictError`."""
    if set(saved) != names | {"step"}:
        raise StateDictError(f"{where} has keys {sorted(saved)}, expected {sorted(names | {'step'})}")
    if not isinstance(saved["step"], int) or saved["step"] < 0:
        raise StateDictError(f"{where} has step {saved['step']!r}, expected an int >= 0")
    # A DTensor parameter's state has the parameter's shape (see _sharded_like), a plain one's is flat (two
    # coordinates per complex entry).
    coordinates = tuple(p.shape) if isinstance(p, DTensor) else (_real(p).numel(),)
    for k in sorted(names):
        v = saved[k]
        shape = (*coordinates, *state_width(config, k))
        if not isinstance(v, Tensor) or tuple(v.shape) != shape:
            found = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise StateDictError(f"{where}: entry {k!r} has shape {found}, expected {shape}")
        if isinstance(v, DTensor) != isinstance(p, DTensor):
            raise StateDictError(f"{where}: entry {k!r} is a {type(v).__name__} but the parameter is a "
                                 f"{type(p).__name__}; load sharded (FSDP2) state with torch.distributed."
                                 "checkpoint.state_dict.set_optimizer_state_dict")
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise StateDictError(f"{where}: entry {k!r} is not a finite floating-point tensor")


def default_chunk_size(device: torch.device, config: NetworkConfig | None = None, lstm_runs: bool = True) -> int:
    """``chunk_size=None``'s choice: on CPU, as many coordinates as keep one chunk's LSTM gates (``4 * hidden_size``
    float32 values per coordinate) within 1 MiB, rounded down to a power of two and at least 2048; 65536 elsewhere.

    That is 2048 for the paper's 20 units, where a step's temporaries (under 1 MiB each) stay inside the C
    allocator's reused memory: at 1M parameters a step spent 0 to 4 ms in the kernel against 270 to 530 ms at 16384,
    where freed temporaries were handed back to the OS and faulted in again, while the per-chunk overhead added about
    10% of user time (910 against 820 ms; 1024 was slower, 4096 faulted at times). A narrower rule has smaller
    temporaries and a cheaper LSTM, so there the per-chunk overhead dominates: for 1 layer of 8 units, 8192 (what
    this gives) took 316 ms at 1M parameters against 514 ms at 2048 (``benchmarks/step_cost.py --chunk-size``;
    docs/performance.md). A rule whose LSTM runs on one step in ``lstm_every`` spends the other steps on the
    features alone, where the per-chunk overhead dominates too, so its chunks are ``lstm_every`` times larger, up to
    16384, and on the steps between (``lstm_runs=False``: no parameter's LSTM is due, judged by the optimizer's step
    count), whose temporaries are the features' alone (about 40 float32 values per coordinate against the LSTM's
    several hundred), 4 times that again. For 2 x 20 units every 8 steps at 1M parameters a step averaged 217, 163
    and 194 ms with every chunk at 2048, 16384 and 65536 (65536 faulted: 42 ms of system time), and 146 ms with
    16384 and 65536 between (``benchmarks/step_cost.py --sizes 1M --configs param_scale_every8 --no-memory
    [--chunk-size N]``). Results do not depend on the chunk. On accelerators fewer, larger chunks launch fewer
    kernels.
    """
    if device.type != "cpu":
        return 65536
    config = NetworkConfig() if config is None else config
    rows = CPU_CHUNK_BYTES // (4 * config.hidden_size * 4)
    chunk = max(2048, 1 << (rows.bit_length() - 1))
    if config.lstm_every == 1:
        return chunk
    chunk = max(chunk, min(16384, chunk * config.lstm_every))
    return chunk if lstm_runs else 4 * chunk


def _chunks(segments: list[_Segment], size: int) -> Iterable[list[_Segment]]:
    """Cut parameters into runs of at most ``size`` coordinates; small parameters share a chunk."""
    chunk, filled = [], 0
    for segment in segments:
        start = 0
        while start < segment.stop:
            take = min(size - filled, segment.stop - start)
            chunk.append(replace(segment, start=start, stop=start + take))
            start, filled = start + take, filled + take
            if filled == size:
                yield chunk
                chunk, filled = [], 0
    if chunk:
        yield chunk


def _param_rms_of(param: Tensor, config: NetworkConfig) -> Tensor | None:
    """The rms of the whole parameter (every shard of a DTensor) before its update, if the rule reads it."""
    if not config.param_scale_feature:
        return None
    rms = param_rms(_real(param) if not isinstance(param, DTensor) else param)
    return rms.full_tensor() if isinstance(rms, DTensor) else rms


def _lr_on(lr: float | Tensor, device: torch.device) -> float | Tensor:
    """A group's ``lr`` as the step multiplies by it: a float as is, a Tensor as a 0-dim tensor that combines with
    parameters on ``device`` (whatever the Tensor's shape, ``[1]`` or ``[1, 1]``, the update keeps its own shape).

    A 0-dim CPU tensor multiplies tensors on any device without a copy, so only a lr on another accelerator moves.
    """
    if not isinstance(lr, Tensor):
        return lr
    lr = lr.reshape(())
    return lr if lr.device == device or lr.device.type == "cpu" else lr.to(device)


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _real(tensor: Tensor) -> Tensor:
    """A complex tensor as a real view with a trailing dimension of 2 (writes reach it), a real one as itself."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


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
