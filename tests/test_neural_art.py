"""The neural-art task (issue 26) on tiny synthetic images written here: no scikit-image, no VGG weights needed."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from torch_lstm_optim.meta.tasks import TaskError, make_task
from torch_lstm_optim.meta.tasks import neural_art
from torch_lstm_optim.meta.tasks.neural_art import CONTENT, TEST_STYLE, TRAINING_STYLE, NeuralArt

Image = pytest.importorskip("PIL.Image")

TINY = dict(features="random", resolution=16, filters=4, levels=2)
COLOURS = {"train": (200, 40, 40), "val": (40, 200, 40), "test": (40, 40, 200)}


def write_png(path: Path, colour: tuple[int, int, int], size: int = 24, seed: int = 0) -> str:
    """A ``size`` x ``size`` image of ``colour`` with texture (noise and stripes), written as a PNG."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor(colour, dtype=torch.float32).view(1, 1, 3)
    stripes = (torch.arange(size) % 4 < 2).float().view(1, size, 1) * 40
    pixels = (base + stripes + 30 * torch.randn(size, size, 3, generator=gen)).clamp(0, 255).to(torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, object]:
    """Two content images per split, each split in its own colour, and a style image, as task options."""
    options: dict[str, object] = {}
    for split, colour in COLOURS.items():
        options[f"content_{split}"] = tuple(write_png(tmp_path / f"{split}{i}.png", colour, seed=i) for i in range(2))
    options["style"] = write_png(tmp_path / "style.png", (120, 90, 30), seed=9)
    return options


def task(images: dict[str, object], **options: object) -> NeuralArt:
    return make_task("neural-art", **{**TINY, **images, **options})


def test_loss_goes_down_under_adam(images: dict[str, object]) -> None:
    art = task(images)
    problem = art.sample(0, "train")
    assert set(problem.params) == {"image"} and problem.params["image"].shape == (3, 16, 16)
    image = problem.params["image"].clone().requires_grad_()
    adam = torch.optim.Adam([image], lr=0.05)
    losses = []
    for step in range(20):
        loss = problem.loss({"image": image}, step)
        losses.append(loss.item())
        adam.zero_grad()
        loss.backward()
        adam.step()
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_matches_finite_differences_in_float64(images: dict[str, object]) -> None:
    art = task(images, tv_weight=0.5)
    problem = art.sample(1, "test")
    image = problem.params["image"].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: problem.loss({"image": x}, 0), (image,), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


def test_splits_use_their_own_content_images_and_problems_repeat(images: dict[str, object]) -> None:
    art = task(images)
    for split, colour in COLOURS.items():
        for seed in range(3):
            content, _ = art.content_image(seed, split)
            assert content.mean((1, 2)).argmax() == max(range(3), key=lambda c: colour[c]), (split, seed)
        assert torch.equal(art.sample(0, split).params["image"], art.sample(0, split).params["image"])
    assert not torch.equal(art.sample(0, "train").params["image"], art.sample(0, "val").params["image"])
    assert art.features_text == "random features (2 scales x 4 filters 5x5, seed 0), not VGG-19"


def test_bad_images_and_sizes_get_clear_errors(images: dict[str, object], tmp_path: Path) -> None:
    missing = tmp_path / "none.png"
    with pytest.raises(TaskError, match=f"image file '{missing}' does not exist"):
        task(images, style=str(missing))
    damaged = tmp_path / "damaged.png"
    damaged.write_text("not an image")
    with pytest.raises(TaskError, match="damaged.png' cannot be read as an image"):
        task(images, style=str(damaged))
    small = write_png(tmp_path / "small.png", (1, 2, 3), size=8)
    with pytest.raises(TaskError, match="is 8x8 pixels: it must be at least 16 pixels on each side"):
        task(images, content_test=(small,))
    with pytest.raises(TaskError, match="unknown image 'mona-lisa': give a path to an image file or one of"):
        task(images, style="mona-lisa")
    with pytest.raises(TaskError, match="resolution must be an integer >= 16, found 8"):
        task(images, resolution=8)
    with pytest.raises(TaskError, match="resolution of at least 2\\*\\*levels"):
        task(images, levels=5)
    with pytest.raises(TaskError, match="content images must differ between splits; train and test share"):
        task(images, content_test=images["content_train"][:1])
    with pytest.raises(TaskError, match="features must be one of"):
        task(images, features="alexnet")


def test_scikit_image_names_without_scikit_image_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                                   images: dict[str, object]) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage.data raises ImportError
    neural_art.load_image.cache_clear()
    try:
        with pytest.raises(TaskError, match=r"pip install 'torch_lstm_optim\[art\]'"):
            task(images, style="astronaut")
    finally:
        neural_art.load_image.cache_clear()


def test_vgg19_without_cached_or_downloadable_weights_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                 images: dict[str, object], tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    neural_art.feature_net.cache_clear()
    with pytest.raises(TaskError) as refused:
        task(images, features="vgg19")
    message = str(refused.value)
    checkpoints = tmp_path / "empty-torch-home" / "hub" / "checkpoints"
    assert f"needs torchvision's VGG-19 ImageNet weights, which are neither in {checkpoints}" in message
    assert "copy vgg19-dcbb9e9d.pth into" in message and "features='random'" in message
    assert not list(checkpoints.glob("*.pth"))


def test_vgg19_features_are_the_papers_layers_once_the_weights_are_there(monkeypatch: pytest.MonkeyPatch,
                                                                         images: dict[str, object]) -> None:
    """torchvision's file stands in for by an untrained VGG-19's state (its 550 MB download is not for a test)."""
    models = pytest.importorskip("torchvision.models")
    monkeypatch.setattr(models.VGG19_Weights, "get_state_dict",
                        lambda self, *args, **kwargs: models.vgg19().state_dict())
    neural_art.feature_net.cache_clear()
    try:
        art = task(images, features="vgg19")
        content, style = art.net(torch.rand(1, 3, 16, 16))
        assert content.shape == (1, 512, 2, 2)  # relu4_2, after three poolings
        assert [m.shape[1:] for m in style] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]
        assert not any(isinstance(layer, torch.nn.MaxPool2d) for layer in art.net.by_dtype[torch.float32])
        problem = art.sample(0, "train")
        image = problem.params["image"].clone().requires_grad_()
        problem.loss({"image": image}, 0).backward()
        assert image.grad.abs().sum() > 0
        assert art.features_text == "VGG-19 ImageNet features (relu4_2 content; relu1_1-relu5_1 style)"
    finally:
        neural_art.feature_net.cache_clear()


def test_the_default_images_are_disjoint_and_load() -> None:
    assert not set(CONTENT["train"]) & set(CONTENT["val"]) and not set(CONTENT["train"]) & set(CONTENT["test"])
    assert not set(CONTENT["val"]) & set(CONTENT["test"]) and TRAINING_STYLE != TEST_STYLE
    assert not {TRAINING_STYLE, TEST_STYLE} & {name for names in CONTENT.values() for name in names}
    pytest.importorskip("skimage")
    art = make_task("neural-art", **TINY, splits=("train", "val", "test"))
    assert art.sample(0, "test").params["image"].shape == (3, 16, 16)
