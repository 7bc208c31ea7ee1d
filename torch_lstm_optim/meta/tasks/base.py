"""The public task interface: what an optimizee family must provide to be meta-trained on and evaluated.

A *task* is a family of problems (say, "a small MLP fitted to a fresh data set"): any object with

- ``name: str``, shown in logs, model cards and results, and
- ``sample(seed)`` or ``sample(seed, split)``, returning a :class:`Problem`. The same arguments must give the same
  problem: every optimizer compared, and a resumed meta-training run, must see the same problems.

A :class:`Problem` is one optimizee: initial parameters held as plain tensors and ``loss(params, step)`` over such
tensors, so that the meta-trainer can differentiate through the parameter updates and the evaluation can run
``torch.optim`` optimizers on leaf copies of the same parameters. :func:`module_problem` builds one from an
``nn.Module`` (with ``torch.func.functional_call``); :func:`step_generator` draws step ``t``'s minibatch.

Optional:

- **Held-out problems** (``split``): ``"train"`` problems are meta-trained on, ``"val"`` ones pick the best weights
  and tune the baselines' learning rates, ``"test"`` ones are the final evaluation. A task that *generates* its
  problems defines ``sample(seed)`` and gets disjoint splits for free: split ``s`` draws seed
  ``split_seed(seed, s)`` (see :class:`SeedSplits`). A task whose problems share a data set that must be kept
  apart (MNIST's training and test images) defines ``sample(seed, split)`` and uses disjoint data per split.
- ``Problem.eval_loss``: the loss reported at the end of a run (e.g. on all of the problem's data).
- ``Problem.param_classes``: a class label per parameter, for one network per class (the paper's CIFAR-10 setup:
  one LSTM for convolutions, one for the rest). A single network, as trained today, ignores them.

Naming a task: the built-in names (``quadratic``, ``mnist-mlp``) or ``package.module:factory``, where ``factory``
(a class or a function) is called with the options as keyword arguments: ``--task-arg key=value`` on the command
lines (values read as Python literals), ``**options`` of :func:`~torch_lstm_optim.meta.tasks.make_task`; and with
``data_dir`` if it takes one. The same name works in ``meta_train``, ``evaluate`` and the Python API.

Validation: :func:`check_task`, which :func:`~torch_lstm_optim.meta.tasks.make_task` runs on every task built (so every
command line does, before any training), samples a ``train`` and a ``val`` problem and raises :class:`TaskError`
naming the task and what is wrong: not a task, a factory that returns something else, a loss that is not a scalar,
not finite at the initial parameters, or that leaves a parameter without a gradient, or a problem that is not the
same when sampled again.

A complete task (the paper's quadratics), used with ``--task my_module:Quadratics --task-arg dim=20``::

    @dataclass
    class Quadratics:
        dim: int = 10
        name: str = "my-quadratics"

        def sample(self, seed: int) -> Problem:
            gen = torch.Generator().manual_seed(seed)
            w, y = torch.randn(self.dim, self.dim, generator=gen), torch.randn(self.dim, generator=gen)
            return Problem(params={"theta": torch.randn(self.dim, generator=gen)},
                           loss=lambda params, step: (w @ params["theta"] - y).square().sum())
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
Forward = Callable[[Tensor], Tensor]
SPLITS = ("train", "val", "test")
SPLIT_STRIDE = 10_000_000  # split_seed keeps splits apart for seeds below this
MAX_SEED = 2**31  # command-line seeds below this keep every derived generator seed inside torch's int64


@dataclass
class Problem:
    """One optimizee.

    - ``params``: initial parameters by name (floating-point tensors; they are copied before use).
    - ``loss(params, step)``: the minibatch loss at optimisation step ``step``, a scalar tensor computed from
      ``params`` (a dict like ``params``, whose tensors the optimizers replace at every step: compute from them,
      never from tensors captured when the problem was built). Minibatches must be a function of the problem and
      ``step`` only (see :func:`step_generator`), so that every optimizer compared sees the same data.
    - ``eval_loss(params)``: optional deterministic loss for reporting (e.g. on all of the problem's data);
      defaults to ``loss(params, 0)``.
    - ``param_classes``: optional name -> class label (e.g. ``"conv"``/``"other"``) for per-class networks;
      names not in it are of no class.
    """

    params: Params
    loss: Callable[[Params, int], Tensor]
    eval_loss: Callable[[Params], Tensor] | None = None
    param_classes: dict[str, str] = field(default_factory=dict)

    def final_loss(self, params: Params) -> Tensor:
        """The reporting loss: ``eval_loss(params)`` if given, else the loss on minibatch 0."""
        return self.eval_loss(params) if self.eval_loss is not None else self.loss(params, 0)


@runtime_checkable
class Task(Protocol):
    """An optimizee family: ``sample(seed, split)`` returns a fresh :class:`Problem`, the same for the same arguments.

    ``split`` is ``"train"`` (meta-training), ``"val"`` (early stopping and tuning baselines) or ``"test"``
    (final evaluation); tasks with data use disjoint data for the three. A task may instead define ``sample(seed)``
    alone: :func:`check_task` then wraps it in :class:`SeedSplits`, which keeps the splits apart by seed.
    """

    name: str

    def sample(self, seed: int, split: str = "train") -> Problem: ...


class TaskError(ValueError):
    """A task (built-in or user's) is unusable; the message names the task and what is wrong."""


def split_seed(seed: int, split: str) -> int:
    """The seed that problem ``seed`` of ``split`` is drawn from: different for each split, for seeds below
    ``SPLIT_STRIDE`` (10 million), so that a task without data still has disjoint held-out problems."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    return SPLITS.index(split) * SPLIT_STRIDE + seed


@dataclass
class SeedSplits:
    """A task whose ``sample(seed)`` takes no split, given one: split ``s`` draws problem ``split_seed(seed, s)``."""

    task: object

    @property
    def name(self) -> str:
        return self.task.name

    def sample(self, seed: int, split: str = "train") -> Problem:
        return self.task.sample(split_seed(seed, split))


def check_task(task: object, label: str, splits: tuple[str, ...] = ("train", "val")) -> Task:
    """Check ``task`` against the interface before any use; return it, wrapped in :class:`SeedSplits` if its
    ``sample`` takes no split.

    Samples problem 0 of each of ``splits`` (by default those meta-training uses; evaluation uses ``val`` and
    ``test``, so that a task which refuses ``train``, like the suite's held-out problems, can be evaluated) and
    checks each: a
    :class:`Problem` of floating-point tensors whose loss at step 0 is a finite scalar that gives every parameter a
    gradient (the unroll differentiates with respect to all of them), and whose ``param_classes`` name only its
    parameters; and that sampling again gives the same initial parameters. Raises :class:`TaskError` naming ``label``
    and what is wrong.
    """
    if not isinstance(task, Task):
        raise TaskError(f"task {label!r}: expected an object with a 'name' and a 'sample(seed, split)' method, "
                        f"found {type(task).__name__}")
    kinds = [p.kind for p in inspect.signature(task.sample).parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL not in kinds and sum(
            k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds) < 2:
        task = SeedSplits(task)
    for split in splits:
        call = f"sample({split_seed(0, split)})" if isinstance(task, SeedSplits) else f"sample(0, {split!r})"
        problem = _check_problem(task, split, f"task {label!r}: {call}")
    again = task.sample(0, split).params
    if again.keys() != problem.params.keys() or not all(torch.equal(again[k], v) for k, v in problem.params.items()):
        raise TaskError(f"task {label!r}: {call} twice gave different initial parameters; draw everything random "
                        "from a generator seeded by the seed (e.g. torch.Generator().manual_seed(seed)), so that "
                        "every optimizer compared starts from the same point")
    return task


def _check_problem(task: Task, split: str, where: str) -> Problem:
    """:func:`check_task`'s checks of problem 0 of ``split``, returned; ``where`` starts each message."""
    try:
        problem = task.sample(0, split)
    except TaskError:
        raise
    except Exception as error:  # the task's own code (often its options) failed: say which task, not a traceback
        raise TaskError(f"{where} failed: {type(error).__name__}: {error}") from error
    if not isinstance(problem, Problem):
        raise TaskError(f"{where} must return a torch_lstm_optim.meta.tasks.Problem, found {type(problem).__name__}")
    if not problem.params or not all(isinstance(v, Tensor) and v.is_floating_point() for v in problem.params.values()):
        raise TaskError(f"{where}: problem.params must be a non-empty dict of floating-point tensors")
    unknown = sorted(set(problem.param_classes) - set(problem.params))
    not_str = [c for c in problem.param_classes.values() if not isinstance(c, str)]
    if unknown or not_str:
        raise TaskError(f"{where}: problem.param_classes must map parameter names to str labels, found unknown "
                        f"names {unknown} and labels that are not str {not_str}")
    params = {k: v.detach().clone().requires_grad_() for k, v in problem.params.items()}
    try:
        losses = {"loss(params, 0)": problem.loss(params, 0)}
        if problem.eval_loss is not None:
            losses["eval_loss(params)"] = problem.eval_loss(params)
    except Exception as error:
        raise TaskError(f"{where}: computing the loss failed: {type(error).__name__}: {error}") from error
    for name, loss in losses.items():
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TaskError(f"{where}: {name} must return a scalar tensor, found "
                            f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
        if not math.isfinite(value := float(loss.detach())):
            raise TaskError(f"{where}: {name} at the initial parameters is not finite ({value})")
    loss = losses["loss(params, 0)"]
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True) if loss.requires_grad else ()
    unused = [k for k, g in zip(params, grads) if g is None] if grads else list(params)
    if unused:
        raise TaskError(f"{where}: loss(params, 0) does not depend on parameters {unused}; compute it from the "
                        "params passed in (module_problem does for an nn.Module), and leave out unused ones")
    return problem


def module_problem(module: nn.Module, batch_loss: Callable[[Forward, int], Tensor],
                   eval_loss: Callable[[Forward], Tensor] | None = None,
                   param_classes: dict[str, str] | None = None) -> Problem:
    """Wrap an ``nn.Module`` as a :class:`Problem` with ``torch.func.functional_call``.

    The module's current parameters (initialise them from the problem's seed) become the initial ``params``; its
    buffers are copied and stay constant. ``batch_loss(forward, step)`` gets ``forward(x) -> output``, the module
    run with the parameters being optimised, and returns the minibatch loss of step ``step``; ``eval_loss(forward)``
    likewise returns the reporting loss.
    """
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}

    def bind(p: Params) -> Forward:
        return lambda x: functional_call(module, (p, buffers), (x,))

    return Problem(params=params, loss=lambda p, step: batch_loss(bind(p), step),
                   eval_loss=None if eval_loss is None else (lambda p: eval_loss(bind(p))),
                   param_classes=param_classes or {})


def torchvision_dataset(kind: str, label: str, data_dir: str, train: bool, download: bool, holding: str) -> object:
    """``torchvision.datasets.<kind>(data_dir, train=train, download=download)``, or a :class:`TaskError` saying
    what is missing: torchvision itself, or the files of ``label`` (``holding``: the folder expected under
    ``data_dir``)."""
    try:
        from torchvision import datasets
    except ImportError as error:
        raise TaskError(f"the {label} tasks need torchvision: pip install 'torch_lstm_optim[train]'") from error
    try:
        return getattr(datasets, kind)(str(data_dir), train=train, download=download)
    except RuntimeError as error:
        if "not found" not in str(error):  # torchvision's own "Dataset not found ..."; anything else: bad files
            raise _unreadable(label, Path(data_dir) / holding, error) from None
        raise TaskError(f"{label} not found under {Path(data_dir).resolve()} ({error}); pass --data-dir pointing at "
                        f"a folder holding {holding}, or allow the download (download=True; on the command line "
                        "--task-arg download=True)") from None
    except (AssertionError, ValueError, OSError, EOFError) as error:  # torchvision's readers assert on bad headers
        raise _unreadable(label, Path(data_dir) / holding, error) from None


def _unreadable(label: str, folder: Path, error: Exception) -> TaskError:
    return TaskError(f"{label} files under {folder.resolve()} cannot be read ({type(error).__name__}: {error}): "
                     f"they are damaged or not {label}; replace them with good copies (or delete them and allow "
                     "the download)")


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator fixed by (problem seed, step): minibatches independent of what ran before."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def parse_task_args(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values read as Python literals where they parse (``hidden=(40,40)``), ``nan``
    and ``inf`` as floats (for the task to refuse by name); ValueError names a malformed item or a reserved key."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--task-arg expects key=value, found {item!r}")
        if key in ("name", "data_dir", "splits"):
            hint = " (use --data-dir)" if key == "data_dir" else ""
            raise ValueError(f"--task-arg {key}: not a task option{hint}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = float(value) if value.strip().lower().lstrip("+-") in ("nan", "inf") else value
    return options
