"""Quick start: train an MLP on MNIST with the learned optimizer and with Adam, side by side, and compare.

    python examples/quickstart.py                          # MNIST downloaded into ./data (11 MB) if missing
    python examples/quickstart.py --data-dir ../shared/data  # a folder already holding MNIST/raw/
    python examples/quickstart.py --weights FOLDER         # other weights: a bundled name, a folder or a hub repo id

``LSTMOptimizer`` is used like any ``torch.optim`` optimizer: ``zero_grad()``, ``backward()``, ``step()``. The
default weights (``generalist``) were meta-trained on a mixture of small problems (MLPs and conv nets on MNIST,
quadratics, teacher-student networks, linear models, test functions, factorisations, token classifiers) and run
untuned at ``lr=1``: ``lr`` multiplies the network's update.

Both optimizers train the same initial model (784-128-10, ReLU) on the same minibatches of 128 training digits;
Adam runs at torch's default learning rate (1e-3). At the end each model is scored on the 10,000 test digits.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets

from torch_lstm_optim import LSTMOptimizer


def mnist(data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    data = datasets.MNIST(data_dir, train=train, download=True)  # no download when the files are there
    return (data.data.float().div(255).sub(0.1307).div(0.3081).flatten(1), data.targets)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Train with both optimizers, print their training losses as they go and the test scores; return the scores."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/ (downloaded there if missing)")
    parser.add_argument("--weights", default=None,
                        help="bundled name, weights folder or hub repo id (default: the bundled default weights)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (minibatches of 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the batches")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    (x, y), (x_test, y_test) = mnist(args.data_dir, True), mnist(args.data_dir, False)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    models = {"learned": model, "adam": copy.deepcopy(model)}
    optimizers = {"learned": LSTMOptimizer(models["learned"].parameters(), weights=args.weights),
                  "adam": torch.optim.Adam(models["adam"].parameters(), lr=1e-3)}
    seconds = dict.fromkeys(models, 0.0)

    for step in range(args.steps):
        batch = torch.randint(len(x), (128,))
        losses = {}
        for name, net in models.items():
            start = time.perf_counter()
            optimizers[name].zero_grad()
            loss = F.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            optimizers[name].step()
            seconds[name] += time.perf_counter() - start
            losses[name] = loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  training loss: learned {losses['learned']:.4f}  adam {losses['adam']:.4f}")

    scores = {}
    with torch.no_grad():
        for name, net in models.items():
            logits = net(x_test)
            scores[name] = {"test_loss": F.cross_entropy(logits, y_test).item(),
                            "test_accuracy": (logits.argmax(1) == y_test).float().mean().item(),
                            "ms_per_step": 1000 * seconds[name] / args.steps}
            print(f"{name:8s} test loss {scores[name]['test_loss']:.4f}  accuracy {scores[name]['test_accuracy']:.2%}"
                  f"  {scores[name]['ms_per_step']:.1f} ms per training step")
    print(f"learned / adam: test loss x{scores['learned']['test_loss'] / scores['adam']['test_loss']:.2f}, "
          f"time per step x{scores['learned']['ms_per_step'] / scores['adam']['ms_per_step']:.1f}")
    return scores


if __name__ == "__main__":
    main()
