"""The unrolled optimisation of a batch of problems by a network: truncated BPTT for meta-training, and plain
runs for validation.

Each step computes ``f(theta_t)`` on minibatch ``t``, its gradient (detached: the paper treats gradients as
constants, so no second derivatives), and ``theta_{t+1} = theta_t + lr * m(grad_t)`` with the network's ONE rule
:meth:`CoordinatewiseLSTM.step`. The coordinates of all problems go through the network as one batch. With one
network per parameter class (the paper's CIFAR-10 setup: ``{"conv": net_a, "other": net_b}``), each parameter goes
to the network of its class (``Problem.param_classes``), and each network gets one batch. With autograd
on, the returned losses are differentiable with respect to the network's weights; between truncations the caller
calls :meth:`Unroll.detach`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..network import CoordinatewiseLSTM, State, param_rms
from .tasks import Params, Problem, TaskError


@dataclass
class Unroll:
    """Where a batch of problems stands: their parameters, each network's state for its coordinates (by class), the
    step."""

    problems: list[Problem]
    params: list[Params]
    state: dict[str, State] | None = None
    step: int = 0

    @classmethod
    def start(cls, problems: list[Problem]) -> Unroll:
        return cls(problems, [{k: v.detach().clone() for k, v in p.params.items()} for p in problems])

    def detach(self) -> None:
        """Cut the graph (end of a truncation): parameters and state become constants."""
        self.params = [{k: v.detach() for k, v in p.items()} for p in self.params]
        if self.state is not None:
            self.state = {c: {k: v.detach() for k, v in s.items()} for c, s in self.state.items()}

    def losses(self) -> Tensor:
        """``f(theta_t)`` of every problem on minibatch ``t``, shape ``(B,)``."""
        return torch.stack([pb.loss(p, self.step) for pb, p in zip(self.problems, self.params)])

    def final_losses(self) -> Tensor:
        """The problems' reporting losses (``Problem.final_loss``) at the current parameters, shape ``(B,)``."""
        with torch.no_grad():
            return torch.stack([pb.final_loss(p) for pb, p in zip(self.problems, self.params)])


Rule = Callable[[Tensor, State, Tensor | None], tuple[Tensor, State]]
Networks = CoordinatewiseLSTM | Mapping[str, CoordinatewiseLSTM]
SINGLE = "all"  # the class of every parameter when one network serves them all


def as_classes(networks: Networks) -> dict[str, CoordinatewiseLSTM]:
    """``{class: network}``; a single network is the network of class :data:`SINGLE`."""
    return {SINGLE: networks} if isinstance(networks, CoordinatewiseLSTM) else dict(networks)


def param_labels(problems: list[Problem], classes: Mapping[str, object]) -> list[str]:
    """The class of every parameter of ``problems``, in their order; a clear error for a parameter the task left
    without a class, or whose class has no network."""
    if set(classes) == {SINGLE}:
        return [SINGLE for pb in problems for _ in pb.params]
    labels = [pb.param_classes.get(name) for pb in problems for name in pb.params]
    missing = sorted({f"{name}: {pb.param_classes.get(name)!r}" for pb in problems for name in pb.params
                      if pb.param_classes.get(name) not in classes})
    if missing:
        raise TaskError(f"parameters without a network of their class {sorted(classes)}: {missing}; the task's "
                        "problems must label every parameter (Problem.param_classes)")
    return labels


def advance(network: Networks, run: Unroll, steps: int, lr: float = 1.0,
            rule: Rule | Mapping[str, Rule] | None = None) -> Tensor:
    """Apply ``steps`` updates; return ``f(theta_t)`` for the ``steps`` new parameters, shape ``(steps, B)``.

    ``network`` is one network, or ``{class: network}`` for one network per parameter class. Differentiable with
    respect to the networks if autograd is enabled by the caller; under ``torch.no_grad`` it is a plain
    optimisation run (the optimizee's gradients are still computed). ``rule`` (per class for several networks)
    replaces ``network.step`` by a compiled version of it (``torch.compile(network.step)``), never by other math.
    """
    networks = as_classes(network)
    rules = dict(rule) if isinstance(rule, Mapping) else {c: rule for c in networks}
    rules = {c: rules.get(c) or net.step for c, net in networks.items()}
    labels = param_labels(run.problems, networks)
    members = {c: [j for j, label in enumerate(labels) if label == c] for c in networks}  # parameter indices
    meta = torch.is_grad_enabled()
    losses = []
    for i in range(steps + 1):
        with torch.enable_grad():
            run.params = [{k: v if v.requires_grad else v.detach().requires_grad_() for k, v in p.items()}
                          for p in run.params]
            current = run.losses()
            if i > 0:
                losses.append(current if meta else current.detach())
            if i == steps:
                break
            flat = [v for p in run.params for v in p.values()]
            grads = torch.autograd.grad(current.sum(), flat, retain_graph=meta)
        updates: list[Tensor | None] = [None] * len(flat)
        state = run.state or {}
        for label, net in networks.items():
            if not members[label]:
                continue
            grad = torch.cat([grads[j].reshape(-1) for j in members[label]])
            if label not in state:
                state[label] = net.init_state(grad)
            rms = torch.cat([param_rms(flat[j]).expand(flat[j].numel()) for j in members[label]]) \
                if net.config.param_scale_feature else None
            update, state[label] = rules[label](grad, state[label], rms)
            for j, piece in zip(members[label], update.split([flat[j].numel() for j in members[label]])):
                updates[j] = piece.view_as(flat[j])
        run.state = state
        pieces = iter(updates)
        run.params = [{k: v + lr * next(pieces) for k, v in p.items()} for p in run.params]
        run.step += 1
    return torch.stack(losses)


def meta_loss(losses: Tensor, objective: str, floor: Tensor | None = None) -> Tensor:
    """The meta-objective of a truncation's losses ``(steps, B)``.

    ``"sum"``: the paper's ``sum_t w_t f(theta_t)`` with ``w_t = 1``, averaged over problems.
    ``"log"``: the mean of ``log f`` - comparable across problems whose losses differ by orders of magnitude.
    ``"final"``: the mean of ``log f`` over the last tenth of the window. With ``truncation == horizon`` this is
    the end-of-training loss that evaluation reports: the other two also reward fast early progress, which
    measurably traded away final loss on the MNIST MLP.
    ``floor`` ``(B,)``: for the log objectives, each problem's loss counts as at least its floor (else 1e-30), so
    that problems already driven far towards zero stop outweighing the rest (``--log-floor``).
    """
    if objective == "sum":
        return losses.sum(0).mean()
    if objective not in ("log", "final"):
        raise ValueError(f"unknown meta-objective {objective!r}: use 'sum', 'log' or 'final'")
    if objective == "final":
        losses = losses[-max(1, len(losses) // 10):]
    return (losses.clamp_min(1e-30) if floor is None else torch.maximum(losses, floor.clamp_min(1e-30))).log().mean()
