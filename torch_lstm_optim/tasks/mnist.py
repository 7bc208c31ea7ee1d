"""The paper's MNIST MLP: one hidden layer of 20 sigmoid units, cross-entropy, minibatches of 128.

Width, depth and activation are options (the paper's generalisation tests use 40 units, 2 layers, ReLU).
Data splits: ``train`` and ``val`` are disjoint parts of the MNIST training set (the last ``val_size`` digits are
validation), ``test`` is the MNIST test set, kept for the final evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, module_problem, step_generator

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@lru_cache(maxsize=4)
def load_mnist(data_dir: str, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """MNIST as ``(images (N, 784) in [0, 1], labels (N,))`` through ``torchvision.datasets.MNIST``."""
    try:
        from torchvision import datasets
    except ImportError as error:
        raise TaskError("the MNIST tasks need torchvision: pip install 'torch_lstm_optim[train]'") from error
    try:
        data = datasets.MNIST(str(data_dir), train=train, download=download)
    except RuntimeError as error:
        raise TaskError(f"MNIST not found under {Path(data_dir).resolve()} ({error}); pass --data-dir pointing at "
                        "a folder holding MNIST/raw/, or allow the download (download=True; on the "
                        "command line --task-arg download=True)") from None
    return data.data.reshape(len(data.data), -1).float() / 255.0, data.targets.long()


@dataclass
class MnistMLP:
    """MLPs on MNIST. ``hidden`` lists the widths of the hidden layers."""

    hidden: tuple[int, ...] = (20,)
    activation: str = "sigmoid"
    batch_size: int = 128
    data_dir: str = "data"
    download: bool = False
    val_size: int = 2000
    name: str = "mnist-mlp"

    def __post_init__(self) -> None:
        self.hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        if self.activation not in ACTIVATIONS:
            raise TaskError(f"task {self.name!r}: activation must be one of {sorted(ACTIVATIONS)}, "
                            f"found {self.activation!r}")

    def data(self, split: str) -> tuple[Tensor, Tensor]:
        images, labels = load_mnist(self.data_dir, split != "test", self.download)
        if split == "test":
            return images, labels
        cut = len(images) - self.val_size
        return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])

    def build(self, gen: torch.Generator) -> nn.Module:
        """The MLP, initialised by PyTorch's default initialisation drawn from ``gen``."""
        sizes = (784, *self.hidden)
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[self.activation]()]
        layers.append(nn.Linear(sizes[-1], 10))
        model = nn.Sequential(*layers)
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    bound = layer.in_features ** -0.5
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)
        return model

    def sample(self, seed: int, split: str = "train") -> Problem:
        images, labels = self.data(split)
        model = self.build(torch.Generator().manual_seed(seed))

        def batch_loss(forward, step: int) -> Tensor:
            index = torch.randint(len(images), (self.batch_size,), generator=step_generator(seed, step))
            return F.cross_entropy(forward(images[index]), labels[index])

        return module_problem(model, batch_loss, eval_loss=lambda forward: F.cross_entropy(forward(images), labels))
