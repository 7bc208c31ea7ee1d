"""The ``cifar10-conv`` task on a tiny CIFAR-10 written here in torchvision's python-pickle layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_lstm_optim import LSTMOptimizer
from torch_lstm_optim.meta.tasks import TaskError, make_task

from conftest import make_network

pytest.importorskip("torchvision")

TRAIN_PER_BATCH, N_TEST = 16, 40


def write_cifar10(root: Path, per_batch: int = TRAIN_PER_BATCH, n_test: int = N_TEST) -> Path:
    """``root/cifar-10-batches-py/``: data_batch_1..5, test_batch, batches.meta; random pixels, labels cycling
    through 0..9 (so every class is present); pixel [0, 0] of channel 0 holds the image's index in its file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(n)
        labels = [(i + len(name)) % 10 for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels,
                         "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root


def accept_generated_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the real files' MD5 sums; the generated ones pass if they exist."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.fixture
def cifar_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    accept_generated_files(monkeypatch)
    return write_cifar10(tmp_path / "data")


def task(cifar_dir: Path, **options: object):
    return make_task("cifar10-conv", data_dir=str(cifar_dir), **{"val_size": 20, **options})


def test_the_papers_conv_net_with_conv_weights_in_their_own_class(cifar_dir: Path) -> None:
    problem = task(cifar_dir).sample(0, "train")
    shapes = {k: tuple(v.shape) for k, v in problem.params.items()}
    assert shapes["conv1.weight"] == (16, 3, 5, 5) and shapes["conv3.weight"] == (16, 16, 5, 5)
    assert shapes["linear1.weight"] == (32, 16 * 4 * 4) and shapes["out.weight"] == (10, 32)
    assert {k for k, c in problem.param_classes.items() if c == "conv"} == {f"conv{i}.weight" for i in (1, 2, 3)}
    assert set(problem.param_classes) == set(problem.params)
    assert {"conv1.bias", "bn1.weight", "bn1.bias", "linear1.weight", "bn_linear1.bias", "out.bias"} <= {
        k for k, c in problem.param_classes.items() if c == "other"}
    loss = problem.loss(problem.params, 0)
    assert loss.shape == () and 1.0 < float(loss) < 5.0
    assert torch.equal(task(cifar_dir).sample(0).params["conv2.weight"], problem.params["conv2.weight"])


def test_splits_are_disjoint_parts_of_the_training_set_and_the_test_set(cifar_dir: Path) -> None:
    t = task(cifar_dir)
    train, val, test = (t.data(s) for s in ("train", "val", "test"))
    assert (len(train[0]), len(val[0]), len(test[0])) == (5 * TRAIN_PER_BATCH - 20, 20, N_TEST)
    assert train[0].shape[1:] == (3, 32, 32) and train[0].dtype == torch.uint8
    # channel 0, pixel (0, 0) is the index within the file: the test set's are 0..N_TEST-1 in order
    assert test[0][:, 0, 0, 0].tolist() == list(range(N_TEST))
    # val: the last 20 training images, the end of data_batch_4 (16 images) and all of data_batch_5
    assert val[0][:, 0, 0, 0].tolist() == [12, 13, 14, 15] + list(range(16))


def test_batch_norm_uses_batch_statistics_and_the_loss_is_a_pure_function(cifar_dir: Path) -> None:
    problem = task(cifar_dir, eval_batch=7).sample(1, "val")
    params = {k: v.clone().requires_grad_() for k, v in problem.params.items()}
    first = problem.loss(params, 3)
    first.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    assert torch.equal(problem.loss(params, 3), first)  # nothing was updated in place (no running statistics)
    assert not torch.equal(problem.loss(params, 4), first)
    final = problem.final_loss(params)
    assert not final.requires_grad and torch.equal(problem.final_loss(params), final)


@pytest.mark.parametrize("options, kept", [
    (dict(classes=(0, 1)), (0, 1)),            # CIFAR-2
    (dict(classes=(3, 1, 4, 5, 9)), (3, 1, 4, 5, 9)),  # CIFAR-5, labels numbered in the order given
    (dict(exclude=(0, 1, 2, 3, 4)), (5, 6, 7, 8, 9)),  # the held-out labels
])
def test_label_subsets_keep_their_images_and_one_output_per_class(cifar_dir: Path, options: dict[str, object],
                                                                  kept: tuple[int, ...]) -> None:
    t = task(cifar_dir, **options)
    assert t.classes == kept
    _, all_labels = task(cifar_dir).data("test")
    images, labels = t.data("test")
    expected = [kept.index(label) for label in all_labels.tolist() if label in kept]
    assert labels.tolist() == expected and len(images) == len(expected)
    problem = t.sample(0, "test")
    assert problem.params["out.weight"].shape == (len(kept), 32)
    assert float(problem.final_loss(problem.params)) > 0


@pytest.mark.parametrize("options, match", [
    (dict(classes=(0,)), "at least 2 distinct"), (dict(classes=(0, 0)), "at least 2 distinct"),
    (dict(classes=(0, 10)), "at least 2 distinct"), (dict(classes=(0, 1), exclude=(2,)), "not both"),
    (dict(kernel=4), "odd kernel"),
])
def test_bad_options_are_named(cifar_dir: Path, options: dict[str, object], match: str) -> None:
    with pytest.raises(TaskError, match=match):
        task(cifar_dir, **options)


def test_missing_cifar10_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"CIFAR-10 not found under .*empty.*cifar-10-batches-py.*download=True"):
        make_task("cifar10-conv", data_dir=str(tmp_path / "empty"))


def test_one_network_per_param_class(cifar_dir: Path) -> None:
    """The paper's CIFAR-10 setup: param groups from ``param_classes``, one LSTM each; the loss goes down."""
    problem = task(cifar_dir, classes=(0, 1)).sample(0, "train")
    params = {k: v.clone().requires_grad_() for k, v in problem.params.items()}
    nets = {"conv": make_network(seed=1), "other": make_network(seed=2)}
    optimizer = LSTMOptimizer([{"params": [p for k, p in params.items() if problem.param_classes[k] == c],
                                "weights": nets[c]} for c in ("conv", "other")], lr=0.01)
    assert optimizer.network_of(0) is nets["conv"] and optimizer.network_of(1) is nets["other"]
    before = {k: v.detach().clone() for k, v in params.items()}
    for step in range(3):
        optimizer.zero_grad()
        problem.loss(params, step).backward()
        optimizer.step()
    assert all(not torch.equal(before[k], v) for k, v in params.items())
