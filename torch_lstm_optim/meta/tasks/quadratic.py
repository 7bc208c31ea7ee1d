"""The paper's quadratics: ``f(theta) = ||W theta - y||^2`` with ``W`` (d x d), ``y`` and ``theta_0`` i.i.d. N(0, 1).

With ``condition``, ``W = Q diag(s) R`` instead (``Q``, ``R`` random rotations, ``s`` log-spaced from 1 down to
``condition^-1/2``), so that the Hessian ``2 W^T W`` has exactly that condition number: the generalist's mixture
uses 1 to 1e4, where a single learning rate must serve curvatures 1e4 apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Problem, TaskError, split_seed


@dataclass
class Quadratic:
    """Random quadratics of dimension ``dim`` (10 in the paper). No data: splits only change the seeds."""

    dim: int = 10
    condition: float | None = None
    name: str = "quadratic"

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise TaskError(f"task {self.name!r}: dim must be an int >= 1, found {self.dim!r}")
        if self.condition is not None and not (isinstance(self.condition, (int, float)) and
                                               1 <= self.condition < math.inf):
            raise TaskError(f"task {self.name!r}: condition must be a finite number >= 1, found {self.condition!r}")

    def sample(self, seed: int, split: str = "train") -> Problem:
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        w = torch.randn(self.dim, self.dim, generator=gen)
        if self.condition is not None:
            rotations = [torch.linalg.qr(torch.randn(self.dim, self.dim, generator=gen))[0] for _ in range(2)]
            spectrum = torch.logspace(0, -0.5 * math.log10(self.condition), self.dim)
            w = rotations[0] @ torch.diag(spectrum) @ rotations[1]
        y = torch.randn(self.dim, generator=gen)
        theta = torch.randn(self.dim, generator=gen)

        def loss(params: dict[str, torch.Tensor], step: int = 0) -> torch.Tensor:
            return (w @ params["theta"] - y).square().sum()

        return Problem(params={"theta": theta}, loss=loss)
