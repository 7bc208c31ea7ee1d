"""A user task whose optimizee loss becomes non-finite, for the meta-trainer's tests of diverging unrolls.

Used as ``--task diverging_task:Diverging`` (the tests folder is on ``sys.path`` under pytest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from torch_lstm_optim.meta.tasks import Problem
from torch_lstm_optim.meta.tasks.quadratic import Quadratic


@dataclass
class Diverging(Quadratic):
    """The paper's quadratics, except that a training problem whose seed is ``>= from_seed`` and a multiple of
    ``every`` has an infinite loss from step 1 on (step 0 is finite, so the task passes ``check_task``).

    Problems that do not diverge are exactly the ``quadratic`` task's, so a run can be compared with one on it.
    """

    from_seed: int = 0
    every: int = 1
    name: str = "diverging"

    def sample(self, seed: int, split: str = "train") -> Problem:
        problem = super().sample(seed, split)
        if split != "train" or seed < self.from_seed or seed % self.every:
            return problem
        finite_loss = problem.loss

        def loss(params: dict[str, torch.Tensor], step: int = 0) -> torch.Tensor:
            return finite_loss(params, step) * (1.0 if step == 0 else math.inf)

        return Problem(params=problem.params, loss=loss)
