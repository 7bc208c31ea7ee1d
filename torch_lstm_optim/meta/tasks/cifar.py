"""The paper's CIFAR-10 conv net (Andrychowicz et al. 2016, Section 3.3, Fig. 7), and its label subsets.

The network of the paper's released code: three conv layers of 16 channels (5x5, padding "same"), each followed by
batch norm, ReLU and 2x2 max pooling; then a linear layer of 32 units with batch norm and ReLU; then one output per
class. Cross-entropy, minibatches of 128, images scaled to [0, 1] (as the paper's code; batch norm follows every
conv). ``param_classes`` puts the conv weights in ``"conv"`` and everything else (biases, batch norm, linear layers)
in ``"other"``: the paper trained one LSTM for each.

**Batch norm** runs in training mode everywhere (``track_running_stats=False``): every forward normalises with the
statistics of its own batch, and there are no running statistics. That is what the optimizee's objective is (the
minibatch loss the optimizers descend, the same in every run), and it keeps the problem a pure function of its
parameters under ``torch.func.functional_call``: nothing is updated in place between steps, so every optimizer
compared sees the same losses. The reporting loss (``eval_loss``) likewise normalises each chunk of
``eval_batch`` images with its own statistics: deterministic, and close to the full-batch statistics for chunks of
1000.

**Data** comes through ``torchvision.datasets.CIFAR10(data_dir, download=...)``, which checks the files' MD5 sums
(``download=False`` by default: nothing is fetched unless asked). Splits: ``train`` and ``val`` are disjoint parts
of the CIFAR-10 training set (the last ``val_size`` images are validation), ``test`` is the CIFAR-10 test set.

**Label subsets**: ``classes=(0, 1)`` keeps those labels (the paper's CIFAR-2; five labels for CIFAR-5) and the net
gets one output per kept class, numbered in the order given; ``exclude=(...)`` keeps all others (e.g. meta-train on
five labels and test on the five held out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, module_problem, step_generator, torchvision_dataset

NUM_CLASSES = 10
FOLDER = "cifar-10-batches-py"


@lru_cache(maxsize=2)
def load_cifar10(data_dir: str, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """CIFAR-10 as ``(images (N, 3, 32, 32) uint8, labels (N,))`` through ``torchvision.datasets.CIFAR10``."""
    data = torchvision_dataset("CIFAR10", "CIFAR-10", data_dir, train, download,
                               f"{FOLDER}/ (the python version of CIFAR-10)")
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(data.targets, dtype=torch.long)


@dataclass
class Cifar10Conv:
    """The paper's conv net on CIFAR-10 or a subset of its labels (``classes`` or ``exclude``)."""

    channels: tuple[int, ...] = (16, 16, 16)
    kernel: int = 5
    hidden: tuple[int, ...] = (32,)
    batch_norm: bool = True
    classes: tuple[int, ...] | None = None
    exclude: tuple[int, ...] = ()
    batch_size: int = 128
    data_dir: str = "data"
    download: bool = False
    val_size: int = 5000
    eval_size: int | None = 10000
    eval_batch: int = 1000
    name: str = "cifar10-conv"

    def __post_init__(self) -> None:
        as_tuple = (lambda v: (v,) if isinstance(v, int) else tuple(v))
        self.channels, self.hidden, self.exclude = as_tuple(self.channels), as_tuple(self.hidden), as_tuple(
            self.exclude)
        if self.classes is not None and self.exclude:
            raise TaskError(f"task {self.name!r}: give classes or exclude, not both")
        classes = tuple(range(NUM_CLASSES)) if self.classes is None else as_tuple(self.classes)
        classes = tuple(c for c in classes if c not in self.exclude)
        if (len(classes) < 2 or len(set(classes)) != len(classes)
                or not all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in classes)
                or not all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in self.exclude)):
            raise TaskError(f"task {self.name!r}: the labels kept must be at least 2 distinct ints in 0..9, found "
                            f"classes={self.classes!r}, exclude={self.exclude!r}")
        self.classes = classes
        if not self.channels or self.kernel < 1 or self.kernel % 2 == 0:
            raise TaskError(f"task {self.name!r}: need at least one conv layer and an odd kernel, found "
                            f"channels={self.channels!r}, kernel={self.kernel!r}")

    def data(self, split: str) -> tuple[Tensor, Tensor]:
        """``(uint8 images, labels numbered 0..len(classes)-1)`` of ``split``, only the kept classes."""
        images, labels = load_cifar10(self.data_dir, split != "test", self.download)
        if split != "test":
            cut = len(images) - self.val_size
            images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
        if self.classes != tuple(range(NUM_CLASSES)):
            relabel = torch.full((NUM_CLASSES,), -1, dtype=torch.long)
            relabel[list(self.classes)] = torch.arange(len(self.classes))
            labels = relabel[labels]
            keep = labels >= 0
            images, labels = images[keep], labels[keep]
        if len(labels) == 0:
            raise TaskError(f"task {self.name!r}: no images of classes {self.classes} in the {split!r} split")
        return images, labels

    def build(self, gen: torch.Generator) -> nn.Module:
        """The conv net, initialised by PyTorch's default initialisation drawn from ``gen``."""
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        side = 32
        for i, (n_in, n_out) in enumerate(zip((3, *self.channels), self.channels), start=1):
            layers[f"conv{i}"] = nn.Conv2d(n_in, n_out, self.kernel, padding=self.kernel // 2)
            if self.batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm2d(n_out, track_running_stats=False)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2, ceil_mode=True)  # "SAME" pooling, as the paper's code
            side = -(-side // 2)
        layers["flatten"] = nn.Flatten()
        sizes = (self.channels[-1] * side * side, *self.hidden)
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), start=1):
            layers[f"linear{i}"] = nn.Linear(n_in, n_out)
            if self.batch_norm:
                layers[f"bn_linear{i}"] = nn.BatchNorm1d(n_out, track_running_stats=False)
            layers[f"relu_linear{i}"] = nn.ReLU()
        layers["out"] = nn.Linear(sizes[-1], len(self.classes))
        model = nn.Sequential(layers)
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    bound = layer.weight[0].numel() ** -0.5
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)
        return model

    def sample(self, seed: int, split: str = "train") -> Problem:
        images, labels = self.data(split)
        model = self.build(torch.Generator().manual_seed(seed))
        classes = {name: "conv" if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Conv2d)
                   and name.endswith(".weight") else "other" for name, _ in model.named_parameters()}
        n_eval = len(images) if self.eval_size is None else min(self.eval_size, len(images))

        def batch_loss(forward, step: int) -> Tensor:
            index = torch.randint(len(images), (self.batch_size,), generator=step_generator(seed, step))
            return F.cross_entropy(forward(to_float(images[index])), labels[index])

        def eval_loss(forward) -> Tensor:
            """Mean cross-entropy over the first ``eval_size`` images, ``eval_batch`` at a time, without autograd."""
            bounds = list(range(0, n_eval, self.eval_batch)) + [n_eval]
            if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
                del bounds[-2]  # batch norm needs 2 images per batch: the last one joins the chunk before
            total = torch.zeros(())
            with torch.no_grad():
                for start, stop in zip(bounds, bounds[1:]):
                    total += F.cross_entropy(forward(to_float(images[start:stop])), labels[start:stop],
                                             reduction="sum")
            return total / n_eval

        return module_problem(model, batch_loss, eval_loss=eval_loss, param_classes=classes)


def to_float(images: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1], as the paper's code feeds them."""
    return images.float() / 255.0
