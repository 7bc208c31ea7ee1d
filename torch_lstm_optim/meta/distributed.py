"""Meta-training on several processes: the few ``torch.distributed`` calls the meta-trainer makes.

``torchrun --nproc-per-node N -m torch_lstm_optim.meta_train ...`` starts N processes. Each unrolls its share of
the meta-iteration's problems; after ``loss.backward()`` the meta-gradients are averaged over the processes with
one all-reduce of one flat buffer, which is what DDP does inside. (DDP itself does not fit: truncated BPTT calls the
network's ``step`` many times per backward, and DDP's reducer expects one ``forward`` per backward.) Every process
then takes the same meta-optimizer step, so the networks stay identical without being broadcast.

With one process (``WORLD_SIZE`` unset or 1) nothing is initialised and every helper gives the single-process
result: the meta-trainer runs exactly as without this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def launched_processes() -> int:
    """The number of processes the launcher started (torchrun's ``WORLD_SIZE``), known before initialisation."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    """The number of processes in the initialised group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 without a group. Rank 0 alone writes files and shows progress."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextmanager
def process_group() -> Iterator[None]:
    """Initialise the process group from torchrun's environment when ``WORLD_SIZE > 1`` (gloo: the networks are on
    the CPU); destroy it on the way out. With one process, nothing."""
    if launched_processes() <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo")
    try:
        yield
        # All processes tear down together: a process whose peer had already destroyed its group was seen to abort
        # in gloo's teardown ("terminate called without an active exception") after finishing its work.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def share(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``world_size()``-th one from index ``rank()``. The shares are
    disjoint, cover ``items``, and are equal when ``len(items)`` is a multiple of the world size."""
    return list(items[rank()::world_size()])


def mean(values: Tensor) -> Tensor:
    """The mean of the 1-D ``values`` of all processes together (a process may have none); with one process
    ``values.mean()``. A non-finite value anywhere makes the mean non-finite everywhere."""
    if world_size() == 1:
        return values.mean()
    total = torch.stack([values.double().sum(), torch.tensor(float(values.numel()), dtype=torch.float64)])
    dist.all_reduce(total)
    return (total[0] / total[1]).to(values.dtype)


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process: the same answer everywhere, so that all processes take the same
    branch (a process that skipped a collective the others run would hang them)."""
    if world_size() == 1:
        return flag
    agreed = torch.tensor([int(flag)])
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def average_gradients(parameters: Iterable[Tensor]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the processes: one all-reduce of one flat buffer.

    Each process's meta-loss is the mean over its equal share of the problems, so the average is the gradient of
    the mean over all of them: one process's gradient on the whole meta-batch. A parameter without a gradient on
    some process (its class absent from that share's problems) counts as zero there; one without a gradient on
    every process keeps ``None``, as it would in one process.
    """
    world = world_size()
    if world == 1:
        return
    params = list(parameters)
    flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
                     + [torch.tensor([float(p.grad is not None) for p in params])])
    dist.all_reduce(flat)
    flat /= world
    pieces = flat.split([p.numel() for p in params] + [len(params)])
    for p, piece, present in zip(params, pieces, pieces[-1].tolist()):
        p.grad = piece.view_as(p) if present > 0 else None
