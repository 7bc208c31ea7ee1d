"""Generated problems that end near a loss of zero: linear models on separable or noiseless data, and test functions.

The MNIST families plateau well above zero, while the generalist's largest losses on the suite are on runs that tuned
baselines drive to tiny losses. These two download-free families put that regime into the mixture (asked for by name:
``families=...,linear,function``; a first fine-tune on them did not fix those losses, see docs/meta-training.md):

- :class:`LinearModel`: linear regression, logistic or softmax regression on Gaussian features of unequal scales
  (``feature_scale``: per-feature factors ``exp(U(-s, s))``, as raw tabular data has), labelled by a random linear
  teacher with noise ``noise`` (0 gives exact fits and separable classes, whose loss goes to 0 only as the weights
  grow), trained full-batch or on minibatches.
- :class:`SymmetricFactorisation`: a fully observed rank-``rank`` positive semi-definite matrix fitted as ``X X^T``
  (Burer-Monteiro), which tuned gradient descent drives to 1e-6 of its first loss and below in 1,000 steps. The
  suite's matrix completion (asymmetric ``U V^T`` from a third of the entries, on minibatches) stays held out.
- :class:`TestFunction`: classic smooth functions with minimum exactly 0 (Booth, Matyas, Himmelblau, three-hump
  camel, Zakharov), each coordinate stretched by ``exp(U(-1, 1))`` and started uniformly in a box. None of them is
  in the generalization suite (Rosenbrock, Beale and Rastrigin are kept for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, module_problem, split_seed, step_generator
from .mnist import init_uniform


@dataclass
class LinearModel:
    """A linear model (``classes`` 0: regression, 2+: logistic/softmax regression) on a random linear teacher's data."""

    inputs: int = 16
    classes: int = 0
    noise: float = 0.0
    feature_scale: float = 2.0
    batch_size: int | None = None
    samples: int = 256
    name: str = "linear-model"

    def __post_init__(self) -> None:
        if self.classes == 1 or self.classes < 0:
            raise TaskError(f"task {self.name!r}: classes must be 0 (regression) or >= 2, found {self.classes}")

    def sample(self, seed: int, split: str = "train") -> Problem:
        seed = split_seed(seed, split)
        gen = torch.Generator().manual_seed(seed)
        scales = torch.exp((torch.rand(self.inputs, generator=gen) * 2 - 1) * self.feature_scale)
        x = torch.randn(self.samples, self.inputs, generator=gen) * scales
        outputs = max(self.classes, 1)
        teacher = torch.randn(self.inputs, outputs, generator=gen) / (scales[:, None] * self.inputs ** 0.5)
        y = x @ teacher + self.noise * torch.randn(self.samples, outputs, generator=gen)
        if self.classes:
            y = y.argmax(1)
        criterion = F.cross_entropy if self.classes else F.mse_loss
        model = init_uniform(nn.Linear(self.inputs, outputs), gen)
        batch = self.batch_size

        def batch_loss(forward, step: int) -> Tensor:
            if batch is None or batch >= self.samples:
                return criterion(forward(x), y)
            index = torch.randint(self.samples, (batch,), generator=step_generator(seed, step))
            return criterion(forward(x[index]), y[index])

        return module_problem(model, batch_loss, eval_loss=lambda forward: criterion(forward(x), y))


@dataclass
class SymmetricFactorisation:
    """``mean((X X^T - M)^2)`` for ``M = A A^T / rank`` (``A`` is ``size x rank``, N(0, 1)) and ``X`` of ``size x
    factors`` (``factors >= rank``: the minimum is exactly 0), started at ``0.1 N(0, 1)``; full batch."""

    size: int = 20
    rank: int = 2
    factors: int = 4
    name: str = "symmetric-factorisation"

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= self.factors or self.size < 1:
            raise TaskError(f"task {self.name!r}: needs size >= 1 and 1 <= rank <= factors, found size={self.size}, "
                            f"rank={self.rank}, factors={self.factors}")

    def sample(self, seed: int, split: str = "train") -> Problem:
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        a = torch.randn(self.size, self.rank, generator=gen)
        target = a @ a.T / self.rank
        x = torch.randn(self.size, self.factors, generator=gen) * 0.1
        return Problem(params={"x": x}, loss=lambda p, step: (p["x"] @ p["x"].T - target).square().mean())


def _zakharov(v: Tensor) -> Tensor:
    s = (0.5 * torch.arange(1, len(v) + 1, dtype=v.dtype) * v).sum()
    return v.square().sum() + s ** 2 + s ** 4


FUNCTIONS: dict[str, tuple[Callable[[Tensor], Tensor], int | None, float]] = {
    # name: (f, fixed dimension or None for any, half-width of the start box)
    "booth": (lambda v: (v[0] + 2 * v[1] - 7) ** 2 + (2 * v[0] + v[1] - 5) ** 2, 2, 10.0),
    "matyas": (lambda v: 0.26 * (v[0] ** 2 + v[1] ** 2) - 0.48 * v[0] * v[1], 2, 10.0),
    "himmelblau": (lambda v: (v[0] ** 2 + v[1] - 11) ** 2 + (v[0] + v[1] ** 2 - 7) ** 2, 2, 5.0),
    "three-hump-camel": (lambda v: 2 * v[0] ** 2 - 1.05 * v[0] ** 4 + v[0] ** 6 / 6 + v[0] * v[1] + v[1] ** 2, 2, 2.0),
    "zakharov": (_zakharov, None, 2.0),
}


@dataclass
class TestFunction:
    """``f(D theta)`` for a classic test function ``f`` (:data:`FUNCTIONS`) with minimum 0 and a random diagonal
    stretch ``D = exp(U(-stretch, stretch))``, started uniformly in ``f``'s box (divided by ``D``)."""

    function: str = "booth"
    dim: int = 2
    stretch: float = 1.0
    name: str = "test-function"

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise TaskError(f"task {self.name!r}: function must be one of {sorted(FUNCTIONS)}, found {self.function!r}")
        fixed = FUNCTIONS[self.function][1]
        if fixed is not None and self.dim != fixed:
            raise TaskError(f"task {self.name!r}: {self.function} is {fixed}-dimensional, found dim={self.dim}")

    def sample(self, seed: int, split: str = "train") -> Problem:
        f, _, box = FUNCTIONS[self.function]
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        stretch = torch.exp((torch.rand(self.dim, generator=gen) * 2 - 1) * self.stretch)
        theta = (torch.rand(self.dim, generator=gen) * 2 - 1) * box / stretch
        # f is >= 0 in exact arithmetic; clamp the rounding of Matyas and the camel so log-losses stay defined
        return Problem(params={"theta": theta}, loss=lambda params, step: f(stretch * params["theta"]).clamp_min(0))
