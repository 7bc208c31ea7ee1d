"""The paper's quadratics: ``f(theta) = ||W theta - y||^2`` with ``W`` (d x d), ``y`` and ``theta_0`` i.i.d. N(0, 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Problem, split_seed


@dataclass
class Quadratic:
    """Random quadratics of dimension ``dim`` (10 in the paper). No data: splits only change the seeds."""

    dim: int = 10
    name: str = "quadratic"

    def sample(self, seed: int, split: str = "train") -> Problem:
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        w = torch.randn(self.dim, self.dim, generator=gen)
        y = torch.randn(self.dim, generator=gen)
        theta = torch.randn(self.dim, generator=gen)

        def loss(params: dict[str, torch.Tensor], step: int = 0) -> torch.Tensor:
            return (w @ params["theta"] - y).square().sum()

        return Problem(params={"theta": theta}, loss=loss)
