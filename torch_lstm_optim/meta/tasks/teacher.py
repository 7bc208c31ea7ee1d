"""Students fitted to data made by random teachers: the generalist's generated, download-free families.

Each problem draws a teacher (``inputs -> teacher_hidden`` tanh ``-> outputs``, Gaussian weights over the root of
the fan-in), ``samples`` Gaussian inputs, and targets: the teacher's outputs plus Gaussian noise of std ``noise``
(regression, mean squared error), or, with ``classify``, the argmax over ``outputs`` classes of the noisy outputs
(cross-entropy). The student is an MLP with ``hidden`` widths and ``activation``, trained on minibatches of
``batch_size``; its reporting loss is over all samples. :class:`TokenTeacher` does the same for token sequences
and a student with an embedding table (see its docstring). No data set: splits only change the seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, module_problem, split_seed, step_generator
from .mnist import check_activation, init_uniform, mlp


def student_problem(task: Teacher | TokenTeacher, seed: int, split: str,
                    criterion: Callable[[Tensor, Tensor], Tensor]) -> Problem:
    """A student fitted to its teacher's data: ``task.data`` then ``task.build`` drawn from the split's seed, trained
    on minibatches of ``task.batch_size`` under ``criterion``, reported on all samples."""
    seed = split_seed(seed, split)
    gen = torch.Generator().manual_seed(seed)
    x, y = task.data(gen)
    model = task.build(gen)

    def batch_loss(forward, step: int) -> Tensor:
        index = torch.randint(len(x), (task.batch_size,), generator=step_generator(seed, step))
        return criterion(forward(x[index]), y[index])

    return module_problem(model, batch_loss, eval_loss=lambda forward: criterion(forward(x), y))


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
        return student_problem(self, seed, split, F.cross_entropy if self.classify else F.mse_loss)


class _BagOfEmbeddings(nn.Module):
    """Token ids ``(batch, length)`` -> embeddings averaged over the sequence -> optional LayerNorm -> MLP head."""

    def __init__(self, task: TokenTeacher) -> None:
        super().__init__()
        self.embed = nn.Embedding(task.vocab, task.width)
        self.norm = nn.LayerNorm(task.width) if task.layer_norm else nn.Identity()
        self.head = nn.Sequential(*mlp((task.width, *task.hidden, task.classes), task.activation))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(self.embed(tokens).mean(1)))


@dataclass
class TokenTeacher:
    """A bag-of-embeddings classifier of token sequences labelled by a random teacher: the tensors of a language
    model's input side, on generated data.

    The student's embedding table starts as PyTorch's does, N(0, 1) (rms 1), and a LayerNorm's gain at 1: tensors of
    rms 1 on which long strides ruin the model, unlike a quadratic's. Tokens are drawn with Zipf frequencies
    (``p(k) ~ 1/(k+1)``), so a rare token's row gets a gradient in few minibatches: the sparse gradients of an
    embedding. The teacher gives each token a Gaussian vector and labels a sequence by the argmax of a random linear
    map of their mean.
    """

    vocab: int = 64
    width: int = 16
    length: int = 8
    classes: int = 4
    layer_norm: bool = True
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    batch_size: int = 32
    samples: int = 512
    name: str = "token-teacher"

    def __post_init__(self) -> None:
        self.hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        check_activation(self)
        if self.vocab < 2 or self.classes < 2 or self.width < 1 or self.length < 1:
            raise TaskError(f"task {self.name!r}: needs vocab >= 2, classes >= 2, width >= 1 and length >= 1, found "
                            f"vocab={self.vocab}, classes={self.classes}, width={self.width}, length={self.length}")

    def build(self, gen: torch.Generator) -> nn.Module:
        """The student, initialised as PyTorch does (embedding N(0, 1), LayerNorm 1 and 0), drawn from ``gen``."""
        model = init_uniform(_BagOfEmbeddings(self), gen)
        with torch.no_grad():
            model.embed.weight.normal_(generator=gen)
        return model

    def data(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Token ids ``(samples, length)`` and the teacher's labels."""
        frequencies = 1.0 / torch.arange(1, self.vocab + 1, dtype=torch.float64)
        tokens = torch.multinomial(frequencies, self.samples * self.length, replacement=True, generator=gen)
        tokens = tokens.view(self.samples, self.length)
        vectors = torch.randn(self.vocab, 8, generator=gen)
        readout = torch.randn(8, self.classes, generator=gen)
        return tokens, (vectors[tokens].mean(1) @ readout).argmax(1)

    def sample(self, seed: int, split: str = "train") -> Problem:
        return student_problem(self, seed, split, F.cross_entropy)
