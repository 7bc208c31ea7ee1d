"""Student MLPs fitted to data made by random teacher MLPs: the generalist's generated, download-free family.

Each problem draws a teacher (``inputs -> teacher_hidden`` tanh ``-> outputs``, Gaussian weights over the root of
the fan-in), ``samples`` Gaussian inputs, and targets: the teacher's outputs plus Gaussian noise of std ``noise``
(regression, mean squared error), or, with ``classify``, the argmax over ``outputs`` classes of the noisy outputs
(cross-entropy). The student is an MLP with ``hidden`` widths and ``activation``, trained on minibatches of
``batch_size``; its reporting loss is over all samples. No data set: splits only change the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, module_problem, split_seed, step_generator
from .mnist import check_activation, init_uniform, mlp


@dataclass
class Teacher:
    inputs: int = 16
    teacher_hidden: int = 32
    outputs: int = 1
    classify: bool = False
    noise: float = 0.1
    hidden: tuple[int, ...] = (32,)
    activation: str = "tanh"
    batch_size: int = 64
    samples: int = 512
    name: str = "teacher"

    def __post_init__(self) -> None:
        self.hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        check_activation(self)
        if self.classify and self.outputs < 2:
            raise TaskError(f"task {self.name!r}: classify needs outputs >= 2 classes, found {self.outputs}")

    def build(self, gen: torch.Generator) -> nn.Module:
        """The student MLP, initialised by PyTorch's default initialisation drawn from ``gen``."""
        return init_uniform(nn.Sequential(*mlp((self.inputs, *self.hidden, self.outputs), self.activation)), gen)

    def data(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Inputs ``(samples, inputs)`` and the noisy teacher's targets."""
        w1 = torch.randn(self.inputs, self.teacher_hidden, generator=gen) / self.inputs ** 0.5
        w2 = torch.randn(self.teacher_hidden, self.outputs, generator=gen) / self.teacher_hidden ** 0.5
        x = torch.randn(self.samples, self.inputs, generator=gen)
        y = torch.tanh(x @ w1) @ w2
        y = y + self.noise * torch.randn(y.shape, generator=gen)
        return x, (y.argmax(1) if self.classify else y)

    def sample(self, seed: int, split: str = "train") -> Problem:
        seed = split_seed(seed, split)
        gen = torch.Generator().manual_seed(seed)
        x, y = self.data(gen)
        model = self.build(gen)
        criterion = F.cross_entropy if self.classify else F.mse_loss

        def batch_loss(forward, step: int) -> Tensor:
            index = torch.randint(len(x), (self.batch_size,), generator=step_generator(seed, step))
            return criterion(forward(x[index]), y[index])

        return module_problem(model, batch_loss, eval_loss=lambda forward: criterion(forward(x), y))
