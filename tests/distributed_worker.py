"""One process of test_distributed.py: ``torchrun --nproc-per-node 2 tests/distributed_worker.py WEIGHTS OUT``.

For each mode of ``examples/ddp.py`` (DDP, FSDP2), on CPU with gloo, each process trains the example's problem on
its half of the batch for ``STEPS`` steps with ``LSTMOptimizer(WEIGHTS)``, saving a checkpoint (the example's
``torch.distributed.checkpoint`` code) after ``SAVE_AT``; then it restores that checkpoint into a fresh model and
optimizer and trains up to ``STEPS`` again. It writes what it ended with to ``OUT/rank{r}.pt``: the full
parameters and optimizer state of both runs, and the shapes it held locally. The test compares them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.distributed.tensor import DTensor

from torch_lstm_optim import LSTMOptimizer

SEED, STEPS, SAVE_AT = 0, 6, 3

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp.py"
_spec = importlib.util.spec_from_file_location("ddp_example", EXAMPLE)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def train(model: nn.Module, optimizer: LSTMOptimizer, inputs: Tensor, targets: Tensor, steps: int) -> None:
    """``steps`` steps on this process's share of the batch (the engine averages the gradients)."""
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def full_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter whole (an FSDP2 shard is gathered), under its name without DDP's ``module.`` prefix."""
    return {name.removeprefix("module."): (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for name, p in model.named_parameters()}


def full_state(model: nn.Module, optimizer: LSTMOptimizer) -> dict[str, Any]:
    """The optimizer's state, every tensor whole, keyed by parameter name (torch.distributed.checkpoint's view)."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))["state"]


def run(mode: str, weights: str, checkpoint: Path) -> dict[str, Any]:
    """Train in ``mode``, checkpointing to ``checkpoint`` on the way, then again from the checkpoint; the results."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")

    def build() -> tuple[nn.Module, LSTMOptimizer, Tensor, Tensor]:
        model, inputs, targets = example.make_problem(SEED)
        model = example.wrap(model, mode, device)
        return model, LSTMOptimizer(model.parameters(), weights), inputs.chunk(world)[rank], targets.chunk(world)[rank]

    model, optimizer, inputs, targets = build()
    train(model, optimizer, inputs, targets, SAVE_AT)
    example.save_checkpoint(checkpoint, model, optimizer, SAVE_AT)
    train(model, optimizer, inputs, targets, STEPS - SAVE_AT)
    result = {"params": full_parameters(model), "state": full_state(model, optimizer),
              "local": {name: (type(p).__name__, tuple(p.to_local().shape) if isinstance(p, DTensor) else None,
                               {k: (type(v).__name__, tuple(v.to_local().shape))
                                for k, v in optimizer.state[p].items() if isinstance(v, DTensor)})
                        for name, p in model.named_parameters()}}

    model, optimizer, inputs, targets = build()
    result["resumed_step"] = example.load_checkpoint(checkpoint, model, optimizer)
    train(model, optimizer, inputs, targets, STEPS - SAVE_AT)
    result["resumed_params"], result["resumed_state"] = full_parameters(model), full_state(model, optimizer)
    return result


def main() -> None:
    """Both modes, one after the other in the same process group; ``OUT/rank{r}.pt`` holds their results."""
    weights, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {mode: run(mode, weights, out / f"checkpoint_{mode}") for mode in ("ddp", "fsdp")}
    torch.save(results, out / f"rank{dist.get_rank()}.pt")
    dist.barrier()  # tear down together (see torch_lstm_optim.meta.distributed.process_group)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
