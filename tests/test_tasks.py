"""Tasks: the built-in families on small data made here, and the public interface's checks on users' tasks."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_lstm_optim.meta.tasks import Problem, TaskError, make_task

pytest.importorskip("torchvision")


def write_mnist(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    """Tiny MNIST in torchvision's raw idx layout (``root/MNIST/raw``), random pixels and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())
    return root


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


def test_quadratic_is_the_papers_objective() -> None:
    task = make_task("quadratic", dim=4)
    problem = task.sample(3)
    theta = problem.params["theta"]
    assert theta.shape == (4,)
    assert float(problem.loss({"theta": theta}, 0)) > 0
    assert torch.equal(task.sample(3).params["theta"], theta)
    assert not torch.equal(task.sample(3, "val").params["theta"], theta)


def test_mnist_mlp_splits_batches_and_options(mnist_dir: Path) -> None:
    task = make_task("mnist-mlp", data_dir=str(mnist_dir), hidden=(7, 5), activation="relu", batch_size=16,
                     val_size=100)
    assert [len(task.data(s)[0]) for s in ("train", "val", "test")] == [200, 100, 100]
    problem = task.sample(0, "train")
    shapes = sorted(tuple(v.shape) for v in problem.params.values())
    assert shapes == sorted([(7, 784), (7,), (5, 7), (5,), (10, 5), (10,)])
    params = {k: v.clone() for k, v in problem.params.items()}
    assert float(problem.loss(params, 4)) == float(problem.loss(params, 4))  # a step's minibatch is fixed
    assert float(problem.loss(params, 4)) != float(problem.loss(params, 5))
    assert math.isfinite(float(problem.final_loss(params)))


def test_missing_mnist_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="MNIST not found.*--data-dir"):
        make_task("mnist-mlp", data_dir=str(tmp_path))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_mnist_files_are_named(tmp_path: Path, damage: str) -> None:
    images = write_mnist(tmp_path) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(b"not an idx file" if damage == "garbage" else images.read_bytes()[:1000])
    with pytest.raises(TaskError, match="MNIST files under .*MNIST/raw/? cannot be read .*damaged or not MNIST"):
        make_task("mnist-mlp", data_dir=str(tmp_path))


def test_unknown_task_and_bad_options() -> None:
    with pytest.raises(TaskError, match="unknown task 'nope'.*mnist-mlp"):
        make_task("nope")
    with pytest.raises(TaskError, match="bad options"):
        make_task("quadratic", width=3)
    with pytest.raises(TaskError, match="cannot import"):
        make_task("no_such_module_xyz:factory")


USER_TASKS = textwrap.dedent('''
    import torch
    from torch_lstm_optim.meta.tasks import Problem

    class Good:
        name = "good"
        def sample(self, seed, split="train"):
            w = torch.tensor([1.0, 2.0])
            return Problem(params={"x": torch.ones(2)}, loss=lambda p, step: (w * p["x"]).square().sum())

    class NotAScalar(Good):
        def sample(self, seed, split="train"):
            return Problem(params={"x": torch.ones(2)}, loss=lambda p, step: p["x"] * 2)

    class NotFinite(Good):
        def sample(self, seed, split="train"):
            return Problem(params={"x": torch.ones(2)}, loss=lambda p, step: p["x"].sum() * float("nan"))

    class WrongReturn(Good):
        def sample(self, seed, split="train"):
            return {"x": torch.ones(2)}

    def not_a_task():
        return 42
''')


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_tasks_mod.py").write_text(USER_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_tasks_mod"
    sys.modules.pop("user_tasks_mod", None)


def test_user_task_by_path(user_module: str) -> None:
    task = make_task(f"{user_module}:Good")
    assert isinstance(task.sample(0), Problem)


@pytest.mark.parametrize("factory, message", [
    ("NotAScalar", "must return a scalar tensor"),
    ("NotFinite", "not finite"),
    ("WrongReturn", "must return a torch_lstm_optim.meta.tasks.Problem"),
    ("not_a_task", "expected an object with a 'name'"),
    ("Missing", "cannot import 'Missing'"),
])
def test_bad_user_tasks_are_named(user_module: str, factory: str, message: str) -> None:
    with pytest.raises(TaskError, match=f"{user_module}:{factory}.*{message}|{message}"):
        make_task(f"{user_module}:{factory}")


def test_mnist_conv_and_pooled_pixels(mnist_dir: Path) -> None:
    task = make_task("mnist-conv", data_dir=str(mnist_dir), channels=(3, 4), kernel=3, stride=1, pool=True,
                     hidden=(6,), pixels=14, batch_size=8, val_size=100)
    assert task.data("train")[0].shape == (200, 196)
    shapes = sorted(tuple(v.shape) for v in task.sample(0).params.values())
    assert shapes == sorted([(3, 1, 3, 3), (3,), (4, 3, 3, 3), (4,), (6, 4 * 3 * 3), (6,), (10, 6), (10,)])
    with pytest.raises(TaskError, match="reduce 7x7 images to nothing"):
        make_task("mnist-conv", data_dir=str(mnist_dir), channels=(2, 2, 2, 2), pixels=7, val_size=100)


def test_teacher_regression_and_classification() -> None:
    regression = make_task("teacher", inputs=5, outputs=2, hidden=(7,), samples=64, batch_size=16)
    problem = regression.sample(0)
    params = {k: v.clone() for k, v in problem.params.items()}
    assert problem.loss(params, 1) != problem.loss(params, 2) and float(problem.final_loss(params)) > 0
    classes = make_task("teacher", inputs=5, outputs=3, classify=True, samples=300)
    x, y = classes.data(torch.Generator().manual_seed(0))
    assert y.dtype == torch.long and set(y.tolist()) == {0, 1, 2}
    with pytest.raises(TaskError, match="classify needs outputs >= 2"):
        make_task("teacher", classify=True, outputs=1)


def test_token_teacher_starts_as_pytorch_does_and_its_embedding_gets_sparse_gradients() -> None:
    task = make_task("token-teacher", vocab=200, width=8, length=4, classes=3, batch_size=16)
    problem = task.sample(0)
    assert all(torch.equal(v, task.sample(0).params[k]) for k, v in problem.params.items())
    assert not torch.equal(problem.params["embed.weight"], task.sample(1).params["embed.weight"])
    assert problem.params["embed.weight"].pow(2).mean().sqrt() == pytest.approx(1.0, abs=0.1)  # N(0, 1)
    assert torch.equal(problem.params["norm.weight"], torch.ones(8))
    params = {k: v.clone().requires_grad_() for k, v in problem.params.items()}
    problem.loss(params, 0).backward()
    rows_hit = int((params["embed.weight"].grad.abs().sum(1) > 0).sum())
    assert 0 < rows_hit <= 16 * 4 < 200  # only the rows of the 64 tokens drawn, most of the table untouched
    tokens, labels = task.data(torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens.flatten(), minlength=200)
    assert counts[:10].sum() > counts[-100:].sum()  # Zipf: the first tokens are the common ones
    assert labels.dtype == torch.long and set(labels.tolist()) == {0, 1, 2}
    assert "norm.weight" not in make_task("token-teacher", layer_norm=False).sample(0).params
    with pytest.raises(TaskError, match="needs vocab >= 2, classes >= 2"):
        make_task("token-teacher", classes=1)


def test_conditioned_quadratic_has_that_condition_number() -> None:
    problem = make_task("quadratic", dim=8, condition=1e3).sample(0)
    params = {"theta": problem.params["theta"].clone()}
    hessian = torch.autograd.functional.hessian(lambda t: problem.loss({"theta": t}, 0), params["theta"])
    eigenvalues = torch.linalg.eigvalsh(hessian.double())
    assert float(eigenvalues.max() / eigenvalues.min()) == pytest.approx(1e3, rel=1e-3)


def test_mixture_draws_every_family_small_scaled_and_reproducible(mnist_dir: Path) -> None:
    task = make_task("mixture", data_dir=str(mnist_dir), max_params=3000, val_size=100)
    kinds = {task.describe(seed).split("(")[0] for seed in range(40)}
    assert kinds == {"MnistMLP", "MnistConv", "Quadratic", "Teacher"}
    for seed in range(8):
        problem = task.sample(seed)
        assert sum(v.numel() for v in problem.params.values()) <= 3000
        assert all(torch.equal(v, task.sample(seed).params[k]) for k, v in problem.params.items())
    unscaled = make_task("mixture", data_dir=str(mnist_dir), max_params=3000, val_size=100, loss_scale=0.0)
    ratios = []
    for seed in range(6):  # the scale is drawn after the problem: the same problem, its loss times exp(U(-3, 3))
        scaled, plain = task.sample(seed), unscaled.sample(seed)
        ratios.append(float(scaled.loss(scaled.params, 0) / plain.loss(plain.params, 0)))
    assert all(math.exp(-3) <= r <= math.exp(3) for r in ratios) and len({round(r, 6) for r in ratios}) == 6
    assert "Quadratic" in make_task("mixture", families=("quadratic",)).describe(0)
    with pytest.raises(TaskError, match="families must be some of"):
        make_task("mixture", families=("cifar",))


def fitted_loss(problem: Problem) -> float:
    """The full-batch loss after L-BFGS from the problem's start: near the best the model can do."""
    params = {k: v.clone().requires_grad_() for k, v in problem.params.items()}
    optimizer = torch.optim.LBFGS(params.values(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem.eval_loss(params)
        loss.backward()
        return loss

    optimizer.step(closure)
    return problem.eval_loss(params).item()


def test_linear_model_noiseless_fits_exactly_noisy_does_not() -> None:
    exact = make_task("linear-model", inputs=6, noise=0.0, feature_scale=2.0).sample(0)
    assert float(exact.eval_loss(exact.params)) > 0.01 and fitted_loss(exact) < 1e-6
    noisy = make_task("linear-model", inputs=6, noise=0.5).sample(0)
    assert fitted_loss(noisy) > 0.05
    full = make_task("linear-model", inputs=6, classes=3).sample(0)
    assert torch.equal(full.loss(full.params, 0), full.loss(full.params, 7))  # full batch: the same every step
    batched = make_task("linear-model", inputs=6, classes=3, batch_size=16).sample(0)
    assert not torch.equal(batched.loss(batched.params, 0), batched.loss(batched.params, 1))
    assert batched.params["weight"].shape == (3, 6)
    with pytest.raises(TaskError, match="classes must be 0"):
        make_task("linear-model", classes=1)


@pytest.mark.parametrize("function, dim, minimum", [
    ("booth", 2, (1.0, 3.0)), ("matyas", 2, (0.0, 0.0)), ("himmelblau", 2, (3.0, 2.0)),
    ("three-hump-camel", 2, (0.0, 0.0)), ("zakharov", 5, (0.0,) * 5)])
def test_test_functions_are_zero_only_at_their_minimum(function: str, dim: int, minimum: tuple) -> None:
    plain = make_task("test-function", function=function, dim=dim, stretch=0.0).sample(4)  # stretch 0: D = 1
    assert float(plain.loss({"theta": torch.tensor(minimum)}, 0)) == pytest.approx(0.0, abs=1e-5)
    stretched = make_task("test-function", function=function, dim=dim).sample(4)
    assert stretched.params["theta"].shape == (dim,) and float(stretched.loss(stretched.params, 0)) > 0
    assert not torch.equal(stretched.params["theta"], plain.params["theta"])


def test_test_function_options_are_checked() -> None:
    with pytest.raises(TaskError, match="2-dimensional"):
        make_task("test-function", function="booth", dim=3)
    with pytest.raises(TaskError, match="function must be one of"):
        make_task("test-function", function="beale")


def test_mixture_draws_the_families_beyond_the_default_only_when_asked(mnist_dir: Path) -> None:
    task = make_task("mixture", data_dir=str(mnist_dir), max_params=3000, val_size=100,
                     families="linear,function,tokens")
    assert {task.describe(seed).split("(")[0] for seed in range(30)} == {"LinearModel", "TestFunction", "TokenTeacher"}
    for seed in range(6):
        problem = task.sample(seed)
        assert math.isfinite(float(problem.loss(problem.params, 0)))


def test_mixture_zero_bias_and_wide_options_change_only_what_they_say() -> None:
    """``zero_bias`` zeroes the biases of the problems it picks, ``wide`` swaps in student MLPs with one wide hidden
    layer, each drawn from its own generator: at 0 every problem is the one drawn without the options."""
    families = "teacher,linear,quadratic"
    plain = make_task("mixture", families=families)
    assert [make_task("mixture", families=families, zero_bias=0.0, wide=0.0).describe(s) for s in range(12)] \
        == [plain.describe(s) for s in range(12)]
    zero = make_task("mixture", families=families, zero_bias=1.0)
    for seed in range(6):
        before, after = plain.sample(seed).params, zero.sample(seed).params
        assert before.keys() == after.keys()
        for name in before:
            expected = torch.zeros_like(before[name]) if name.endswith("bias") else before[name]
            assert torch.equal(after[name], expected), name
    wide = make_task("mixture", families=families, wide=1.0)
    for seed in range(3):
        problem = wide.sample(seed)
        hidden = [v.shape[0] for k, v in problem.params.items() if k == "0.weight"]
        assert "Teacher" in wide.describe(seed) and 256 <= hidden[0] <= 1024
        assert math.isfinite(float(problem.loss(problem.params, 0)))
    with pytest.raises(TaskError, match="zero_bias"):
        make_task("mixture", zero_bias=1.5)


def test_mixture_rescale_changes_the_units_of_each_tensor_not_the_function() -> None:
    """With ``rescale`` each tensor starts divided by its own ``c`` and the loss multiplies it back: the same loss
    at the start, gradients ``c`` times larger, tensors of other sizes."""
    families = "teacher,quadratic,linear"
    plain, scaled = make_task("mixture", families=families), make_task("mixture", families=families, rescale=3.0)
    ratios = []
    for seed in range(4):
        a, b = plain.sample(seed), scaled.sample(seed)
        torch.testing.assert_close(b.loss(b.params, 0), a.loss(a.params, 0))
        torch.testing.assert_close(b.final_loss(b.params), a.final_loss(a.params))
        pa = {k: v.clone().requires_grad_() for k, v in a.params.items()}
        pb = {k: v.clone().requires_grad_() for k, v in b.params.items()}
        grads_a = torch.autograd.grad(a.loss(pa, 0), list(pa.values()))
        grads_b = torch.autograd.grad(b.loss(pb, 0), list(pb.values()))
        for name, ga, gb in zip(pa, grads_a, grads_b):
            c = float(a.params[name].norm() / b.params[name].norm())
            torch.testing.assert_close(gb, ga * c, rtol=1e-4, atol=1e-6)
            ratios.append(c)
    assert min(ratios) < 0.5 and max(ratios) > 2  # sizes drawn over e^-3..e^3, per tensor
