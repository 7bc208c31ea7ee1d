"""The public task interface: what an optimizee family must provide to be meta-trained on and evaluated.

A :class:`Task` samples :class:`Problem` s from a seed. A problem is a set of initial parameters held as plain
tensors and a loss over such parameters, so that the meta-trainer can differentiate through parameter updates
and the evaluation can run ``torch.optim`` optimizers on leaf copies of the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
SPLITS = ("train", "val", "test")


@dataclass
class Problem:
    """One optimizee.

    - ``params``: initial parameters by name (plain tensors; they are copied before use).
    - ``loss(params, step)``: the minibatch loss at optimisation step ``step`` (a scalar). Minibatches must be a
      function of the problem and ``step`` only, so that every optimizer compared sees the same data.
    - ``eval_loss(params)``: optional deterministic loss for reporting (e.g. on all of the problem's data);
      defaults to ``loss(params, 0)``.
    - ``param_classes``: optional name -> class label (e.g. ``"conv"``/``"other"``) for per-class networks.
    """

    params: Params
    loss: Callable[[Params, int], Tensor]
    eval_loss: Callable[[Params], Tensor] | None = None
    param_classes: dict[str, str] = field(default_factory=dict)

    def final_loss(self, params: Params) -> Tensor:
        return self.eval_loss(params) if self.eval_loss is not None else self.loss(params, 0)


@runtime_checkable
class Task(Protocol):
    """An optimizee family: ``sample(seed, split)`` returns a fresh :class:`Problem`.

    ``split`` is ``"train"`` (meta-training), ``"val"`` (early stopping and tuning baselines) or ``"test"``
    (final evaluation); tasks with data use disjoint data for the three.
    """

    name: str

    def sample(self, seed: int, split: str = "train") -> Problem: ...


class TaskError(ValueError):
    """A task (built-in or user's) is unusable; the message names the task and what is wrong."""


def check_task(task: object, label: str) -> Task:
    """Check that ``task`` follows the interface and that a sampled problem's loss is a finite scalar."""
    if not isinstance(task, Task):
        raise TaskError(f"task {label!r}: expected an object with a 'name' and a 'sample(seed, split)' method, "
                        f"found {type(task).__name__}")
    try:
        problem = task.sample(0, "train")
    except TaskError:
        raise
    except Exception as error:  # the task's own code (often its options) failed: say which task, not a traceback
        raise TaskError(f"task {label!r}: sample(0, 'train') failed: {type(error).__name__}: {error}") from error
    if not isinstance(problem, Problem):
        raise TaskError(f"task {label!r}: sample() must return a torch_lstm_optim.tasks.Problem, "
                        f"found {type(problem).__name__}")
    if not problem.params or not all(isinstance(v, Tensor) and v.is_floating_point() for v in problem.params.values()):
        raise TaskError(f"task {label!r}: problem.params must be a non-empty dict of floating-point tensors")
    loss = problem.loss({k: v.clone() for k, v in problem.params.items()}, 0)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TaskError(f"task {label!r}: loss(params, step) must return a scalar tensor, found "
                        f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
    if not math.isfinite(float(loss)):
        raise TaskError(f"task {label!r}: the loss at the initial parameters is not finite ({float(loss)})")
    return task


def module_problem(module: nn.Module, batch_loss: Callable[[Tensor, int], Tensor],
                   eval_loss: Callable[[Tensor], Tensor] | None = None,
                   param_classes: dict[str, str] | None = None) -> Problem:
    """Wrap an ``nn.Module`` as a :class:`Problem` with ``torch.func.functional_call``.

    ``batch_loss(forward, step)`` gets ``forward(x) -> output`` bound to the params and returns the minibatch loss
    of step ``step``; ``eval_loss(forward)`` likewise returns the reporting loss.
    """
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}

    def bind(p: Params) -> Callable[[Tensor], Tensor]:
        return lambda x: functional_call(module, (p, buffers), (x,))

    return Problem(params=params, loss=lambda p, step: batch_loss(bind(p), step),
                   eval_loss=None if eval_loss is None else (lambda p: eval_loss(bind(p))),
                   param_classes=param_classes or {})


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator fixed by (problem seed, step): minibatches independent of what ran before."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
