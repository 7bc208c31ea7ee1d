"""Optimizee families. Built-in ones by name; a user's by ``"package.module:factory"``.

Both go through :func:`make_task`, so a user's task works everywhere a built-in one does.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from .base import (MAX_SEED, Forward, Params, Problem, SeedSplits, Task, TaskError, check_task, module_problem,
                   split_seed, step_generator)
from .cifar import Cifar10Conv
from .generated import LinearModel, SymmetricFactorisation, TestFunction
from .mixture import Mixture
from .mnist import MnistConv, MnistMLP
from .neural_art import NeuralArt
from .quadratic import Quadratic
from .teacher import Teacher, TokenTeacher

TASKS: dict[str, Callable[..., Task]] = {"quadratic": Quadratic, "mnist-mlp": MnistMLP, "mnist-conv": MnistConv,
                                         "cifar10-conv": Cifar10Conv, "teacher": Teacher, "linear-model": LinearModel,
                                         "test-function": TestFunction,
                                         "symmetric-factorisation": SymmetricFactorisation, "mixture": Mixture,
                                         "neural-art": NeuralArt, "token-teacher": TokenTeacher}

__all__ = ["MAX_SEED", "Forward", "Params", "Problem", "SeedSplits", "TASKS", "Task", "TaskError", "check_task",
           "make_task", "module_problem", "split_seed", "step_generator"]


def make_task(name: str, data_dir: str | None = None, *, splits: tuple[str, ...] = ("train", "val"),
              **options: Any) -> Task:
    """Build a task from a registered name or ``"package.module:factory"``, with ``options`` as keyword args, and
    return it checked by :func:`check_task` (so a task whose ``sample`` takes no split comes back in
    :class:`SeedSplits`).

    ``data_dir`` is passed on only to factories that take a ``data_dir`` (tasks with data), so one command line
    can name it whatever the task. ``splits`` are those :func:`check_task` samples: the ones the caller will use.
    """
    if name in TASKS:
        factory = TASKS[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise TaskError(f"task {name!r}: cannot import {attr!r} from {module_name!r} ({error})") from None
    else:
        raise TaskError(f"unknown task {name!r}: use one of {sorted(TASKS)} or 'package.module:factory'")
    if data_dir is not None and "data_dir" in inspect.signature(factory).parameters:
        options["data_dir"] = data_dir
    try:
        task = factory(**options)
    except TypeError as error:
        raise TaskError(f"task {name!r}: bad options {options} ({error})") from None
    return check_task(task, name, splits)
