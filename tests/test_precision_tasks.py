"""Generated problems whose minimum is exactly 0, which demand precision of the rule (issue 22)."""

from __future__ import annotations

import pytest
import torch

from torch_lstm_optim.meta.tasks import TaskError, make_task
from torch_lstm_optim.meta.tasks.mixture import Mixture


def test_symmetric_factorisation_has_an_exact_minimum_that_gradient_descent_approaches() -> None:
    task = make_task("symmetric-factorisation", size=12, rank=2, factors=2)
    problem = task.sample(3)
    x = problem.params["x"].clone().requires_grad_()
    sgd = torch.optim.SGD([x], lr=3.0)
    first = problem.loss({"x": x}, 0).item()
    for step in range(600):
        sgd.zero_grad()
        problem.loss({"x": x}, step).backward()
        sgd.step()
    assert problem.loss({"x": x}, 0).item() < 1e-6 * first


def test_symmetric_factorisation_splits_differ_and_repeat() -> None:
    task = make_task("symmetric-factorisation")
    a, b, again = task.sample(0, "train"), task.sample(0, "val"), task.sample(0, "train")
    assert not torch.equal(a.params["x"], b.params["x"])
    assert torch.equal(a.params["x"], again.params["x"])


@pytest.mark.parametrize("options", [dict(rank=3, factors=2), dict(rank=0), dict(size=0)])
def test_symmetric_factorisation_refuses_shapes_without_an_exact_fit(options: dict) -> None:
    with pytest.raises(TaskError, match="rank <= factors"):
        make_task("symmetric-factorisation", **options)


def test_the_mixture_draws_factorisations_by_name() -> None:
    mixture = Mixture(families=("factorisation",))
    for seed in range(5):
        assert "SymmetricFactorisation" in mixture.describe(seed)
        problem = mixture.sample(seed)
        assert torch.isfinite(problem.loss(problem.params, 0))
