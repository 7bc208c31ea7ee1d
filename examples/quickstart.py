"""Quick start: train a small MLP on synthetic regression data with the learned optimizer.

    python examples/quickstart.py                   # the bundled default weights
    python examples/quickstart.py --weights FOLDER  # a folder with config.json + model.safetensors

``LSTMOptimizer`` is used like any ``torch.optim`` optimizer: ``zero_grad()``, ``backward()``, ``step()``.

The default weights (``generalist``) were meta-trained on a mixture of small problems (MLPs and conv nets on MNIST,
quadratics, teacher-student regression and classification) and run untuned at ``lr=1``: ``lr`` multiplies the
network's update, as a learning rate would.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

from torch_lstm_optim import LSTMOptimizer


def main(argv: Sequence[str] | None = None) -> list[float]:
    """Train for ``--steps`` full-batch steps and print the loss as it goes; return the losses."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None,
                        help="bundled name, weights folder or hub repo id (default: the bundled default weights)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps to take")
    parser.add_argument("--lr", type=float, default=1.0, help="multiplies the learned update (see above)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the model's initialisation")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    inputs = torch.randn(512, 10)
    targets = torch.sin(inputs @ torch.randn(10, 1))
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = LSTMOptimizer(model.parameters(), weights=args.weights, lr=args.lr)

    losses = []
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return losses


if __name__ == "__main__":
    main()
