"""Held-out problems for the generalization suite: families that meta-training never sees.

The training mixture holds MLPs and small conv nets on MNIST, random quadratics ``||W theta - y||^2`` and MLP
students of random teacher MLPs on synthetic data. Every problem here differs from all of those in its data, its
loss or its architecture; each class's docstring says how. They are registered in :data:`SUITE`, **not** in
``tasks.TASKS``, and refuse the ``train`` split, so that they cannot slip into meta-training: ``val`` problems tune
the baselines' learning rates, ``test`` problems are the evaluation.

- Problems on a data set (scikit-learn's bundled sets, no download) split it once, by a fixed permutation, into a
  ``val`` third and a ``test`` two thirds; a problem's seed draws the initialisation and the minibatches, and its
  reported loss is on all of its split's data.
- Generated problems (test functions, sequences, matrix completion) draw everything from
  ``split_seed(seed, split)``, so ``val`` and ``test`` problems are disjoint; sequence tasks report the loss on a
  fixed batch of 512 fresh sequences.
- Every loss is non-negative, and the test functions are written so that their minimum is exactly 0 in floating
  point (Rastrigin as ``sum x^2 + 20 sin^2(pi x)``, not ``10 d + sum x^2 - 10 cos(2 pi x)``, which rounds below
  0), so that ratios of mean losses are well defined.
- Networks are initialised by PyTorch's default initialisers, drawn from the problem's seed.

scikit-learn is needed for the data-set problems only (``pip install 'torch_lstm_optim[eval]'``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..meta.tasks.base import Problem, TaskError, module_problem, split_seed, step_generator

EVAL_SPLITS = ("val", "test")
BATCH = 32


def _check_split(name: str, split: str) -> None:
    if split not in EVAL_SPLITS:
        raise TaskError(f"task {name!r} is a held-out evaluation problem: split must be one of {EVAL_SPLITS}, "
                        f"found {split!r} (the suite's problems are never meta-trained on)")


def _build(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with PyTorch's default initialisation drawn from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# --- scikit-learn's bundled data sets ---------------------------------------------------------------------------

@lru_cache(maxsize=8)
def load_sklearn(name: str) -> tuple[Tensor, Tensor]:
    """``sklearn.datasets.load_<name>()`` as float32 features and targets (bundled with scikit-learn: no download)."""
    try:
        from sklearn import datasets
    except ImportError:
        raise TaskError(f"the held-out problems on {name!r} need scikit-learn: "
                        "pip install 'torch_lstm_optim[eval]'") from None
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def data_split(name: str, split: str) -> tuple[Tensor, Tensor]:
    """The ``val`` third or the ``test`` two thirds of a data set, by a fixed permutation (disjoint)."""
    x, y = load_sklearn(name)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = len(x) // 3
    index = order[:cut] if split == "val" else order[cut:]
    return x[index], y[index]


def standardise(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


def data_problem(model: nn.Module, x: Tensor, y: Tensor, loss: Callable[[Tensor, Tensor], Tensor], seed: int,
                 batch_size: int = BATCH) -> Problem:
    """Minibatches of ``batch_size`` drawn by (seed, step); the reported loss on all of ``x``."""

    def batch_loss(forward, step: int) -> Tensor:
        index = torch.randint(len(x), (batch_size,), generator=step_generator(seed, step))
        return loss(forward(x[index]), y[index])

    return module_problem(model, batch_loss, eval_loss=lambda forward: loss(forward(x), y))


@dataclass
class BreastCancerLogistic:
    """Logistic regression on breast-cancer tabular data: real medical data and a linear model with a binary loss."""

    name: str = "breast-cancer-logistic"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, y = data_split("breast_cancer", split)
        model = _build(seed, lambda: nn.Linear(30, 1))
        return data_problem(model, standardise(x), y.float(),
                            lambda out, t: F.binary_cross_entropy_with_logits(out.squeeze(-1), t), seed)


@dataclass
class WineSoftmaxRaw:
    """Softmax regression on the wine features left unscaled (0.1 to 1680): per-coordinate curvature spans 1e7."""

    name: str = "wine-softmax-raw"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, y = data_split("wine", split)
        model = _build(seed, lambda: nn.Linear(13, 3))
        return data_problem(model, x, y.long(), F.cross_entropy, seed)


@dataclass
class DiabetesL1:
    """Least-absolute-deviation linear regression on diabetes: a non-smooth loss on raw targets (25 to 346)."""

    name: str = "diabetes-l1"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, y = data_split("diabetes", split)
        model = _build(seed, lambda: nn.Linear(10, 1))
        return data_problem(model, standardise(x), y.float(), lambda out, t: F.l1_loss(out.squeeze(-1), t), seed)


@dataclass
class IrisSVM:
    """A multi-class linear SVM (hinge loss + 0.01 ||W||^2 / 2) on iris: a non-smooth, regularised, convex loss."""

    weight_decay: float = 0.01
    batch_size: int = 16
    name: str = "iris-svm"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, y = data_split("iris", split)
        x, y = standardise(x), y.long()
        layer = _build(seed, lambda: nn.Linear(4, 3))
        params = {"weight": layer.weight.detach().clone(), "bias": layer.bias.detach().clone()}

        def svm(p: dict[str, Tensor], index: Tensor | slice) -> Tensor:
            out = x[index] @ p["weight"].T + p["bias"]
            return F.multi_margin_loss(out, y[index]) + self.weight_decay / 2 * p["weight"].square().sum()

        return Problem(params=params, eval_loss=lambda p: svm(p, slice(None)),
                       loss=lambda p, step: svm(p, torch.randint(len(x), (self.batch_size,),
                                                                 generator=step_generator(seed, step))))


def digits(split: str) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits (17 grey levels, not MNIST's writers or resolution), pixels scaled to [0, 1]."""
    x, y = data_split("digits", split)
    return x / 16.0, y.long()


class _ConvDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x.view(-1, 1, 8, 8))), 2)
        return self.head(F.relu(self.conv2(h)).mean((2, 3)))  # global average pooling


@dataclass
class DigitsConv:
    """The nearest to training (a control): a conv net on other digits (8x8, 17 grey levels), global average pooling."""

    name: str = "digits-conv"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, y = digits(split)
        return data_problem(_build(seed, _ConvDigits), x, y, F.cross_entropy, seed)


@dataclass
class DigitsAutoencoder:
    """A 64-32-8-32-64 tanh autoencoder on 8x8 digits: unsupervised reconstruction (MSE) through a bottleneck."""

    name: str = "digits-autoencoder"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, _ = digits(split)
        model = _build(seed, lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(),
                                                   nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 64)))
        return data_problem(model, x, x, F.mse_loss, seed)


class _ResidualMLP(nn.Module):
    def __init__(self, width: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(64, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                                  nn.Linear(width, width)) for _ in range(blocks))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 10))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


@dataclass
class DigitsResidualLayerNorm:
    """A pre-LayerNorm residual MLP on 8x8 digits with label smoothing 0.1: normalisation layers and skips."""

    name: str = "digits-resmlp-layernorm"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        x, y = digits(split)
        return data_problem(_build(seed, _ResidualMLP), x, y,
                            lambda out, t: F.cross_entropy(out, t, label_smoothing=0.1), seed)


# --- classic non-convex test functions (no data; minimum exactly 0) ---------------------------------------------

def _test_function(f: Callable[[Tensor], Tensor], theta: Tensor) -> Problem:
    return Problem(params={"theta": theta}, loss=lambda params, step: f(params["theta"]))


@dataclass
class Rosenbrock:
    """The 10-d Rosenbrock chain from U(-2, 2): a curved, narrow valley of a quartic, minimum 0 at (1, ..., 1)."""

    dim: int = 10
    name: str = "rosenbrock-10d"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        theta = torch.rand(self.dim, generator=torch.Generator().manual_seed(split_seed(seed, split))) * 4 - 2
        return _test_function(lambda x: (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum(), theta)


@dataclass
class Beale:
    """Beale's function from U(-2, 2)^2: flat plateaus and steep walls, minimum 0 at (3, 0.5)."""

    name: str = "beale-2d"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        theta = torch.rand(2, generator=torch.Generator().manual_seed(split_seed(seed, split))) * 4 - 2

        def beale(v: Tensor) -> Tensor:
            x, y = v[0], v[1]
            return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2

        return _test_function(beale, theta)


@dataclass
class Rastrigin:
    """The 5-d Rastrigin function from U(-3, 3): a lattice of local minima, global minimum 0 at the origin."""

    dim: int = 5
    name: str = "rastrigin-5d"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        theta = torch.rand(self.dim, generator=torch.Generator().manual_seed(split_seed(seed, split))) * 6 - 3
        # 10 (1 - cos(2 pi x)) = 20 sin^2(pi x): exactly 0 at 0 and never below it in floating point
        return _test_function(lambda x: (x ** 2 + 20 * torch.sin(math.pi * x) ** 2).sum(), theta)


# --- generated sequence tasks -----------------------------------------------------------------------------------

class _Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module], inputs: int, hidden: int, outputs: int, per_step: bool) -> None:
        super().__init__()
        self.rnn = cell(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)
        self.per_step = per_step

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(x)
        return self.head(h if self.per_step else h[:, -1])


def sequence_problem(model: nn.Module, draw: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
                     loss: Callable[[Tensor, Tensor], Tensor], seed: int) -> Problem:
    """Fresh sequences every step, drawn by (seed, step); the reported loss on 512 sequences drawn from ``seed``."""
    x_eval, y_eval = draw(512, step_generator(seed, -1))  # no minibatch is drawn from step -1

    def batch_loss(forward, step: int) -> Tensor:
        x, y = draw(BATCH, step_generator(seed, step))
        return loss(forward(x), y)

    return module_problem(model, batch_loss, eval_loss=lambda forward: loss(forward(x_eval), y_eval))


@dataclass
class GRUAdding:
    """A GRU on the adding problem (sum the 2 marked values of 12): recurrence and a long-range dependency, MSE."""

    length: int = 12
    name: str = "gru-adding"

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        values = torch.rand(n, self.length, generator=gen)
        first = torch.randint(self.length // 2, (n,), generator=gen)
        second = torch.randint(self.length // 2, self.length, (n,), generator=gen)
        marks = torch.zeros(n, self.length)
        marks[torch.arange(n), first] = 1.0
        marks[torch.arange(n), second] = 1.0
        return torch.stack([values, marks], -1), (values * marks).sum(1, keepdim=True)

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        s = split_seed(seed, split)
        model = _build(s, lambda: _Recurrent(nn.GRU, 2, 16, 1, per_step=False))
        return sequence_problem(model, self.draw, F.mse_loss, s)


@dataclass
class RNNParity:
    """An Elman (tanh) RNN predicting the running parity of 10 bits: XOR, a target no MLP teacher makes."""

    length: int = 10
    name: str = "rnn-parity"

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        bits = torch.randint(2, (n, self.length), generator=gen)
        return bits.float().unsqueeze(-1) * 2 - 1, bits.cumsum(1) % 2

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        s = split_seed(seed, split)
        model = _build(s, lambda: _Recurrent(nn.RNN, 1, 16, 2, per_step=True))
        return sequence_problem(model, self.draw, lambda out, t: F.cross_entropy(out.reshape(-1, 2), t.reshape(-1)),
                                s)


class _Attention(nn.Module):
    def __init__(self, vocab: int, length: int, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.1)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.position
        h = self.norm(h + self.attention(h, h, h, need_weights=False)[0])
        return self.head(h)


@dataclass
class AttentionReverse:
    """One self-attention block reversing 6 tokens of 8: attention, embeddings, sparse per-token gradients."""

    length: int = 6
    vocab: int = 8
    name: str = "attention-reverse"

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens = torch.randint(self.vocab, (n, self.length), generator=gen)
        return tokens, tokens.flip(1)

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        s = split_seed(seed, split)
        model = _build(s, lambda: _Attention(self.vocab, self.length))
        return sequence_problem(model, self.draw, lambda out, t: F.cross_entropy(out.reshape(-1, self.vocab),
                                                                                 t.reshape(-1)), s)


# --- matrix completion ------------------------------------------------------------------------------------------

@dataclass
class MatrixCompletion:
    """Rank-3 completion of a 40x40 matrix from 30% of its entries by U V^T: bilinear, with scale symmetries."""

    size: int = 40
    rank: int = 3
    factors: int = 5
    observed: float = 0.3
    batch_size: int = 64
    name: str = "matrix-completion"

    def sample(self, seed: int, split: str = "test") -> Problem:
        _check_split(self.name, split)
        s = split_seed(seed, split)
        gen = torch.Generator().manual_seed(s)
        target = torch.randn(self.size, self.rank, generator=gen) @ torch.randn(self.rank, self.size, generator=gen)
        rows, cols = (torch.rand(self.size, self.size, generator=gen) < self.observed).nonzero(as_tuple=True)
        values = target[rows, cols] / self.rank ** 0.5  # entries of unit variance
        params = {"u": torch.randn(self.size, self.factors, generator=gen) * 0.1,
                  "v": torch.randn(self.size, self.factors, generator=gen) * 0.1}

        def error(p: dict[str, Tensor], index: Tensor | slice) -> Tensor:
            return ((p["u"][rows[index]] * p["v"][cols[index]]).sum(-1) - values[index]).square().mean()

        return Problem(params=params,
                       loss=lambda p, step: error(p, torch.randint(len(values), (self.batch_size,),
                                                                   generator=step_generator(s, step))),
                       eval_loss=lambda p: error(p, slice(None)))


FAMILIES: dict[str, tuple[type, ...]] = {
    "tabular (scikit-learn data, other losses)": (BreastCancerLogistic, WineSoftmaxRaw, DiabetesL1, IrisSVM),
    "8x8 digits (scikit-learn), other architectures and losses": (DigitsConv, DigitsAutoencoder,
                                                                  DigitsResidualLayerNorm),
    "non-convex test functions": (Rosenbrock, Beale, Rastrigin),
    "generated sequences (recurrent and attention)": (GRUAdding, RNNParity, AttentionReverse),
    "matrix completion": (MatrixCompletion,),
}
SUITE: dict[str, Callable[[], object]] = {cls().name: cls for family in FAMILIES.values() for cls in family}
FAMILY_OF: dict[str, str] = {cls().name: family for family, classes in FAMILIES.items() for cls in classes}


def why(name: str) -> str:
    """The one-line reason problem ``name`` is out of the training distribution (its class docstring)."""
    return (SUITE[name].__doc__ or "").strip()
