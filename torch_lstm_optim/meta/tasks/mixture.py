"""The generalist's training mixture: every problem is drawn from a random family with random settings.

Families (``families``): MLPs on MNIST (1-3 hidden layers of 8-128 units; sigmoid, tanh, ReLU, GELU; batches of
32-256; the digits at 28x28 or average-pooled to 14x14 or 7x7), small conv nets on MNIST (1-2 conv layers of 4-16
channels, kernel 3 or 5, stride 1 or 2, with or without max pooling, an optional hidden linear layer), quadratics of
dimension 2-100 and condition number 1-1e4, and student MLPs on data from random teacher MLPs (regression or 2-10
classes, 4-64 inputs, noise 0-0.5). Four more families must be asked for by name (``families``; the default is the
four above, the mixture the shipped generalist was trained on): ``linear``, linear, logistic and softmax regression
on generated data with features of unequal scales, noiseless half the time (separable classes, exact fits), full-batch
half the time; ``function``, stretched test functions with minimum 0; and ``factorisation``, symmetric low-rank
factorisations ``X X^T`` of 5-40 x 5-40 matrices of rank 1-4 (see :mod:`.generated`). All three end near a loss of
zero, a regime the MNIST families never reach. The fourth, ``tokens``, is a bag-of-embeddings classifier of generated
token sequences (:class:`.teacher.TokenTeacher`: vocabularies of 16-512 tokens with Zipf frequencies, embeddings of
8-32, with or without a LayerNorm): tensors of rms 1 (an embedding table, a LayerNorm gain) that must not stride,
and an embedding's sparse gradients. Sizes are drawn log-uniformly; a draw with more than
``max_params`` parameters (or a conv net that pools its images away) is drawn again (the meta-trainer's cost grows
with the coordinates, and 2 CPU cores train this).

Two options make the parameters look more like a user's model, where a rule that reads the parameter's size
(``param_scale_feature``) meets them: ``zero_bias``, the probability that a problem's biases start at zero (as
attention blocks, LayerNorm and many user models start them), and ``wide``, the probability that the problem is
instead a student MLP with one hidden layer of 256-1024 units (up to 26,000 parameters, above ``max_params``), whose
second layer has the small weights of a wide layer (rms about 0.01-0.02, as the hidden layers of real nets). A third,
``rescale``, breaks the tie between a parameter's size and the family it comes from (in the plain mixture every
tensor of rms 1 is a quadratic's or a test function's): each tensor is trained in units ``c`` times larger,
``theta = c * theta'`` with ``log c ~ U(-rescale, rescale)`` drawn per tensor, which leaves the problem the same
function of its parameters but divides the tensor's rms by ``c`` and multiplies its gradient by ``c``; the one rule
right for every ``c`` moves each tensor in proportion to its size. All three are drawn from a generator of their
own, so with all at 0 (the default) every problem is what it was before.

The loss is multiplied by ``exp(U(-loss_scale, loss_scale))``, so that the rule cannot rely on the gradient's
absolute size. Only MNIST (training digits; ``val`` uses the held-out ones) and generated data are used: every other
data set is kept for the generalization suite. Everything is drawn from the problem's seed and split, so a problem
is the same every time it is sampled (resumed meta-training is bit-identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .base import Problem, TaskError, split_seed
from .generated import FUNCTIONS, LinearModel, SymmetricFactorisation, TestFunction
from .mnist import ACTIVATIONS, MnistConv, MnistMLP
from .quadratic import Quadratic
from .teacher import Teacher, TokenTeacher

FAMILIES = ("mnist-mlp", "mnist-conv", "quadratic", "teacher", "linear", "function", "factorisation", "tokens")
DEFAULT_FAMILIES = FAMILIES[:4]


def problem_size(task: object) -> int:
    """How many parameters ``task``'s problems have: from its model if it builds one, else from a sample (cheap)."""
    if hasattr(task, "build"):
        return sum(p.numel() for p in task.build(torch.Generator()).parameters())
    return sum(v.numel() for v in task.sample(0).params.values())


class _Draw:
    """Random choices from one generator."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.gen, dtype=torch.float64))

    def log_int(self, low: int, high: int) -> int:
        return int(round(math.exp(self.uniform(math.log(low), math.log(high)))))

    def choice(self, options: tuple) -> object:
        return options[int(torch.randint(len(options), (), generator=self.gen))]


@dataclass
class Mixture:
    data_dir: str = "data"
    download: bool = False
    val_size: int = 2000
    families: tuple[str, ...] = DEFAULT_FAMILIES
    max_params: int = 10_000
    loss_scale: float = 3.0
    zero_bias: float = 0.0
    wide: float = 0.0
    rescale: float = 0.0
    name: str = "mixture"

    def __post_init__(self) -> None:
        # a string is a comma-separated list, as typed on a command line: --task-arg families=quadratic,linear
        self.families = tuple(self.families.split(",")) if isinstance(self.families, str) else tuple(self.families)
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise TaskError(f"task {self.name!r}: families must be some of {FAMILIES}, found {self.families}")
        for option in ("zero_bias", "wide"):
            if not 0 <= getattr(self, option) <= 1:
                raise TaskError(f"task {self.name!r}: {option} is a probability in [0, 1], "
                                f"found {getattr(self, option)!r}")
        if not 0 <= self.rescale <= 10:
            raise TaskError(f"task {self.name!r}: rescale is the half-width of log c, in [0, 10], "
                            f"found {self.rescale!r}")

    def family(self, family: str, draw: _Draw) -> object:
        """A task of ``family`` with settings drawn from ``draw``."""
        act = tuple(ACTIVATIONS)
        if family == "quadratic":
            return Quadratic(dim=draw.log_int(2, 100), condition=math.exp(draw.uniform(0, math.log(1e4))))
        if family == "linear":
            return LinearModel(inputs=draw.log_int(2, 64), classes=draw.choice((0, 2, draw.log_int(3, 10))),
                               noise=draw.choice((0.0, draw.uniform(0, 0.5))), feature_scale=draw.uniform(0, 2),
                               batch_size=draw.choice((None, draw.log_int(16, 128))))
        if family == "function":
            function = draw.choice(tuple(FUNCTIONS))
            return TestFunction(function=function, dim=FUNCTIONS[function][1] or draw.log_int(2, 20))
        if family == "factorisation":
            rank = draw.log_int(1, 4)
            return SymmetricFactorisation(size=draw.log_int(5, 40), rank=rank, factors=rank + draw.log_int(1, 4) - 1)
        if family == "tokens":
            return TokenTeacher(vocab=draw.log_int(16, 512), width=draw.log_int(8, 32), length=draw.log_int(4, 32),
                                classes=draw.log_int(2, 10), layer_norm=draw.choice((False, True)),
                                hidden=draw.choice(((), (draw.log_int(8, 64),))), activation=draw.choice(act),
                                batch_size=draw.log_int(16, 128))
        if family == "teacher":
            classify = draw.choice((False, True))
            return Teacher(inputs=draw.log_int(4, 64), teacher_hidden=draw.log_int(8, 64),
                           outputs=draw.log_int(2, 10) if classify else draw.log_int(1, 4), classify=classify,
                           noise=draw.uniform(0, 0.5), activation=draw.choice(act),
                           hidden=tuple(draw.log_int(8, 64) for _ in range(draw.log_int(1, 2))),
                           batch_size=draw.log_int(32, 128))
        mnist = dict(data_dir=self.data_dir, download=self.download, val_size=self.val_size,
                     pixels=draw.choice((7, 14, 28)),
                     activation=draw.choice(act), batch_size=draw.log_int(32, 256))
        if family == "mnist-mlp":
            return MnistMLP(hidden=tuple(draw.log_int(8, 128) for _ in range(draw.log_int(1, 3))), **mnist)
        return MnistConv(channels=tuple(draw.log_int(4, 16) for _ in range(draw.log_int(1, 2))),
                         kernel=draw.choice((3, 5)), stride=draw.choice((1, 2)), pool=draw.choice((True, False)),
                         hidden=draw.choice(((), (draw.log_int(8, 64),))), **mnist)

    def draw_task(self, draw: _Draw) -> object:
        """A family, then its settings, drawn again while the problem has more than ``max_params`` parameters."""
        family = draw.choice(self.families)
        for _ in range(1000):
            task = self.family(family, draw)
            try:
                size = problem_size(task)
            except TaskError:  # a conv net whose pooling leaves no pixels
                continue
            if size <= self.max_params:
                return task
        raise TaskError(f"task {self.name!r}: no {family} problem fits max_params={self.max_params}")

    def wide_task(self, draw: _Draw) -> Teacher:
        """A student MLP with one wide hidden layer (the ``wide`` option)."""
        classify = draw.choice((False, True))
        return Teacher(inputs=draw.log_int(4, 16), teacher_hidden=draw.log_int(8, 64),
                       outputs=draw.log_int(2, 10) if classify else draw.log_int(1, 4), classify=classify,
                       noise=draw.uniform(0, 0.5), activation=draw.choice(tuple(ACTIVATIONS)),
                       hidden=(draw.log_int(256, 1024),), batch_size=draw.log_int(32, 128))

    def _draws(self, seed: int, split: str) -> tuple[object, _Draw, bool, _Draw]:
        """Problem ``seed``'s task, the generator that drew it, whether its biases start at zero, and the generator of
        the options (``rescale`` draws from it next)."""
        draw = _Draw(torch.Generator().manual_seed(split_seed(seed, split)))
        options = _Draw(torch.Generator().manual_seed(split_seed(seed, split) + 7919))  # zero_bias and wide
        wide = bool(self.wide) and options.uniform(0, 1) < self.wide
        zero_bias = bool(self.zero_bias) and options.uniform(0, 1) < self.zero_bias
        return (self.wide_task(options) if wide else self.draw_task(draw)), draw, zero_bias, options

    def sample(self, seed: int, split: str = "train") -> Problem:
        task, draw, zero_bias, options = self._draws(seed, split)
        problem = task.sample(int(torch.randint(2**31, (), generator=draw.gen)), split)
        scale = math.exp(draw.uniform(-self.loss_scale, self.loss_scale))
        units = {k: math.exp(options.uniform(-self.rescale, self.rescale)) if self.rescale else 1.0
                 for k in problem.params}
        params = {k: torch.zeros_like(v) if zero_bias and k.endswith("bias") else v / units[k]
                  for k, v in problem.params.items()}
        inner_loss, inner_final = problem.loss, problem.final_loss

        def original(params: dict) -> dict:  # theta = c * theta'
            return {k: v * units[k] for k, v in params.items()} if self.rescale else params

        return replace(problem, params=params, loss=lambda params, step: scale * inner_loss(original(params), step),
                       eval_loss=lambda params: scale * inner_final(original(params)))

    def describe(self, seed: int, split: str = "train") -> str:
        """What problem ``seed`` of ``split`` is (for logs and tests)."""
        task, _, zero_bias, _ = self._draws(seed, split)
        return repr(task) + " (biases, if any, start at zero)" * zero_bias
