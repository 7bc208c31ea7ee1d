"""MNIST optimizees: the paper's MLP (one hidden layer of 20 sigmoid units, cross-entropy, minibatches of 128) and
small conv nets, both for the generalist's training mixture.

Width, depth and activation are options (the paper's generalisation tests use 40 units, 2 layers, ReLU); ``pixels``
14 trains on the digits average-pooled to 14x14 (4x fewer first-layer weights: cheaper problems for meta-training).
Data splits: ``train`` and ``val`` are disjoint parts of the MNIST training set (the last ``val_size`` digits are
validation), ``test`` is the MNIST test set, kept for the final evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, module_problem, step_generator, torchvision_dataset

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@lru_cache(maxsize=4)
def load_mnist(data_dir: str, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """MNIST as ``(images (N, 784) in [0, 1], labels (N,))`` through ``torchvision.datasets.MNIST``."""
    data = torchvision_dataset("MNIST", "MNIST", data_dir, train, download, "MNIST/raw/")
    return data.data.reshape(len(data.data), -1).float() / 255.0, data.targets.long()


def downsample(images: Tensor, pixels: int) -> Tensor:
    """Flat 28x28 images ``(N, 784)`` average-pooled to ``pixels x pixels`` (28 divisible by ``pixels``)."""
    if pixels == 28:
        return images
    return F.avg_pool2d(images.view(-1, 1, 28, 28), 28 // pixels).reshape(len(images), -1)


def mlp(sizes: tuple[int, ...], activation: str) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes``, each but the output layer followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
    return layers[:-1]


def check_activation(task: object) -> None:
    """A :class:`TaskError` naming the task if its ``activation`` is not one of :data:`ACTIVATIONS`."""
    if task.activation not in ACTIVATIONS:
        raise TaskError(f"task {task.name!r}: activation must be one of {sorted(ACTIVATIONS)}, "
                        f"found {task.activation!r}")


def init_uniform(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation of every Linear/Conv2d (uniform in +-1/sqrt(fan_in)), drawn from ``gen``."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                bound = (layer.weight[0].numel()) ** -0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    return model


@dataclass
class MnistMLP:
    """MLPs on MNIST. ``hidden`` lists the widths of the hidden layers."""

    hidden: tuple[int, ...] = (20,)
    activation: str = "sigmoid"
    batch_size: int = 128
    data_dir: str = "data"
    download: bool = False
    val_size: int = 2000
    pixels: int = 28
    name: str = "mnist-mlp"

    def __post_init__(self) -> None:
        self.hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        check_activation(self)
        if self.pixels not in (7, 14, 28):
            raise TaskError(f"task {self.name!r}: pixels must be 7, 14 or 28, found {self.pixels!r}")

    def data(self, split: str) -> tuple[Tensor, Tensor]:
        images, labels = load_mnist(self.data_dir, split != "test", self.download)
        images = downsample(images, self.pixels)
        if split == "test":
            return images, labels
        cut = len(images) - self.val_size
        return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])

    def build(self, gen: torch.Generator) -> nn.Module:
        """The MLP, initialised by PyTorch's default initialisation drawn from ``gen``."""
        return init_uniform(nn.Sequential(*mlp((self.pixels ** 2, *self.hidden, 10), self.activation)), gen)

    def sample(self, seed: int, split: str = "train") -> Problem:
        images, labels = self.data(split)
        model = self.build(torch.Generator().manual_seed(seed))

        def batch_loss(forward, step: int) -> Tensor:
            index = torch.randint(len(images), (self.batch_size,), generator=step_generator(seed, step))
            return F.cross_entropy(forward(images[index]), labels[index])

        return module_problem(model, batch_loss, eval_loss=lambda forward: F.cross_entropy(forward(images), labels))


@dataclass
class MnistConv(MnistMLP):
    """Small conv nets on MNIST: ``channels`` conv layers (kernel ``kernel``, stride ``stride``, each followed by the
    activation and, with ``pool``, 2x2 max pooling), then hidden linear layers of widths ``hidden``, then the 10
    classes."""

    channels: tuple[int, ...] = (8,)
    kernel: int = 3
    stride: int = 1
    pool: bool = True
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    name: str = "mnist-conv"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = (self.channels,) if isinstance(self.channels, int) else tuple(self.channels)

    def build(self, gen: torch.Generator) -> nn.Module:
        layers: list[nn.Module] = [nn.Unflatten(1, (1, self.pixels, self.pixels))]
        for n_in, n_out in zip((1, *self.channels), self.channels):
            layers += [nn.Conv2d(n_in, n_out, self.kernel, self.stride, padding=self.kernel // 2),
                       ACTIVATIONS[self.activation]()]
            if self.pool:
                layers.append(nn.MaxPool2d(2))
        body = nn.Sequential(*layers, nn.Flatten())
        try:
            with torch.no_grad():
                features = body(torch.zeros(1, self.pixels ** 2)).shape[1]
        except RuntimeError:  # a pooling layer met an image of one pixel
            features = 0
        if features == 0:
            raise TaskError(f"task {self.name!r}: {len(self.channels)} conv layers reduce {self.pixels}x"
                            f"{self.pixels} images to nothing")
        return init_uniform(nn.Sequential(body, *mlp((features, *self.hidden, 10), self.activation)), gen)
