"""Data-parallel training with the learned optimizer: DDP, or FSDP2 with the optimizer state sharded.

    torchrun --nproc-per-node 2 examples/ddp.py --mode ddp
    torchrun --nproc-per-node 2 examples/ddp.py --mode fsdp --checkpoint ckpt   # run it again: it resumes

Every process computes the gradient of its share of the batch; the gradients are averaged across processes.
``--mode ddp`` (``DistributedDataParallel``): every process holds the whole model and the whole optimizer state,
and applies the same update. ``--mode fsdp`` (FSDP2, ``fully_shard``): every process holds one shard of each
parameter, and ``LSTMOptimizer`` keeps the state of that shard only (its h/c state is 2 x layers x hidden floats per
coordinate, much more than Adam's 2, so sharding it is what makes big models fit). ``--checkpoint`` saves and
restores model and optimizer with ``torch.distributed.checkpoint``: each process writes and reads its own shards.
One process per GPU (nccl) when there are GPUs, else CPU processes (gloo).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from torch_lstm_optim import LSTMOptimizer


def make_problem(seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    """A small MLP and its whole training set (synthetic regression), the same in every process."""
    torch.manual_seed(seed)
    inputs = torch.randn(512, 10)
    targets = torch.sin(inputs @ torch.randn(10, 1))
    return nn.Sequential(nn.Linear(10, 25), nn.Tanh(), nn.Linear(25, 1)), inputs, targets


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """``"ddp"``: replicate ``model``; ``"fsdp"``: shard each layer's parameters, then the rest, across processes."""
    model = model.to(device)
    if mode == "ddp":
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def save_checkpoint(folder: Path, model: nn.Module, optimizer: LSTMOptimizer, step: int) -> None:
    """Write model, optimizer state and step to ``folder``; with FSDP2 each process writes its shards."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state, "step": step}, checkpoint_id=folder)


def load_checkpoint(folder: Path, model: nn.Module, optimizer: LSTMOptimizer) -> int:
    """Restore what :func:`save_checkpoint` wrote into ``model`` and ``optimizer``; return the step to go on from."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    checkpoint = {"model": model_state, "optimizer": optimizer_state, "step": 0}
    dcp.load(checkpoint, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=checkpoint["model"],
                   optim_state_dict=checkpoint["optimizer"])
    return checkpoint["step"]


def main(argv: Sequence[str] | None = None) -> list[float]:
    """Train for ``--steps`` full-batch steps; rank 0 prints the whole batch's loss. Return the losses."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="ddp",
                        help="ddp: replicate the model; fsdp: shard parameters and optimizer state (FSDP2)")
    parser.add_argument("--weights", default=None,
                        help="bundled name, weights folder or hub repo id (default: the bundled default weights)")
    parser.add_argument("--steps", type=int, default=100, help="train until this many steps were taken in all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the model's initialisation")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="folder to resume from if it holds a checkpoint, and to save to at the end")
    args = parser.parse_args(argv)

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, inputs, targets = make_problem(args.seed)
    inputs, targets = inputs.chunk(world)[rank].to(device), targets.chunk(world)[rank].to(device)
    model = wrap(model, args.mode, device)
    optimizer = LSTMOptimizer(model.parameters(), weights=args.weights)
    start = 0
    if args.checkpoint is not None and (args.checkpoint / ".metadata").exists():
        start = load_checkpoint(args.checkpoint, model, optimizer)
        if rank == 0:
            print(f"resumed from {args.checkpoint} at step {start}")

    losses = []
    for step in range(start, args.steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)  # equal shares: the whole batch's loss is the mean of the processes' losses
        losses.append(total.item() / world)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}")
    if args.checkpoint is not None:
        done = max(start, args.steps)
        save_checkpoint(args.checkpoint, model, optimizer, done)
        if rank == 0:
            print(f"saved {args.checkpoint} at step {done}")
    dist.barrier()  # tear down together: gloo can abort a process whose peer has already gone
    dist.destroy_process_group()
    return losses


if __name__ == "__main__":
    main()
