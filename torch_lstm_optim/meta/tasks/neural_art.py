"""Neural art (Andrychowicz et al. 2016, Section 3.4, Figures 8 and 9): the pixels of one image optimised to take
the content of a photograph and the style of another image (Gatys et al., "A Neural Algorithm of Artistic Style").

The parameters are the image itself, one tensor ``"image"`` of shape ``(3, resolution, resolution)``, started from
white noise (uniform in [0, 1], as Gatys et al.). The loss, with ``F`` the feature maps of a fixed conv net::

    content_weight * mean((F_c(x) - F_c(content))^2)
      + style_weight * sum_l mean((G_l(x) - G_l(style))^2)      G_l = F_l F_l^T / positions (Gram matrix)
      + tv_weight * (mean squared difference of neighbouring pixels)

The last term is the paper's smoothness regulariser ``L_reg``. The style term is Gatys et al.'s ``E_l`` summed with
equal weights, times 4. The content term is a mean, where Gatys et al. take half a sum, so that losses are
comparable across resolutions. The default weights were chosen on the random features below, not on VGG-19.

**Features** (``features``):

- ``"vgg19"``, the default: torchvision's VGG-19 with its ImageNet weights, fetched as torchvision does (into
  ``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch`` by default). The paper says only that it follows Gatys et
  al., so the layers are theirs: content from relu4_2, style from relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1,
  with max pooling replaced by average pooling. Without the weights, cached or downloadable, the task refuses with
  a :class:`TaskError` saying which file is missing and where to put it.
- ``"random"``: a fixed random multi-scale net. The image is average-pooled to ``levels`` scales (1, 1/2, 1/4,
  ...). Each scale has ``filters`` ReLU filters of ``kernel`` x ``kernel``, with Gaussian weights of variance
  1/fan-in, no bias, drawn from ``feature_seed``. Style takes the Gram matrices of every scale, content the features
  at scale 1/2. Textures synthesised from random features are a published result (Ustyuzhaninov et al. 2017,
  "What does it take to generate natural textures?": one layer of random multi-scale filters; He et al. 2016,
  random-weight deep networks). This is what can run without a download, and on 2 CPU cores.
  ``NeuralArt.features_text`` names the features of a task, for figure and table titles.

**Images** are names of photographs that scikit-image ships (``skimage.data``, e.g. ``astronaut``, ``coffee``,
``chelsea``; ``pip install 'torch_lstm_optim[art]'``) or paths of image files (read with Pillow). Greyscale images
are repeated to 3 channels, and an alpha channel is dropped.

**Splits**: each split has its own content images (``content_train``, ``content_val``, ``content_test``), which
must not overlap. Problem ``seed`` of a split picks one of its images and a random square crop of it, from
``crop`` to all of the shorter side, resized to ``resolution``, and its starting noise. All of these come from
``split_seed(seed, split)``, so a problem is the same every time. The style image (all of it, centre-cropped
square) is the same for every problem. The paper's generalisation test takes another ``style`` and
``resolution``. Defaults: train on :data:`CONTENT` ``["train"]`` with :data:`TRAINING_STYLE`; :data:`TEST_STYLE`
is used by no split and held out for the test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, TaskError, split_seed

# The photographs of skimage.data that ship with scikit-image (no download): what a name may be.
SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
                  "page", "retina", "rocket", "text")
CONTENT = {"train": ("coffee", "rocket", "camera", "moon", "page", "text", "cell"),
           "val": ("coins", "clock", "retina"),
           "test": ("astronaut", "chelsea")}  # ("cat" is chelsea again: in no split)
TRAINING_STYLE = "immunohistochemistry"
TEST_STYLE = "brick"
FEATURES = ("vgg19", "random")
MIN_PIXELS = 16  # the smallest resolution and image side: VGG-19's relu5_1 is then 1x1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Indices in torchvision's vgg19().features of the ReLUs Gatys et al. use.
VGG19_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu4_2": 22, "relu5_1": 29}
VGG19_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG19_CONTENT = "relu4_2"


def is_path(source: str) -> bool:
    """Whether an image ``source`` names a file (it has a folder or a suffix) rather than a ``skimage.data`` image."""
    return "/" in source or "\\" in source or Path(source).suffix != ""


@lru_cache(maxsize=32)
def load_image(source: str) -> Tensor:
    """The image ``source`` (a ``skimage.data`` name or a file path) as ``(3, H, W)`` floats in [0, 1]; a
    :class:`TaskError` says what is wrong: scikit-image or Pillow missing, an unknown name, a missing or unreadable
    file, or an image smaller than ``MIN_PIXELS`` on a side."""
    import numpy as np

    if is_path(source):
        path = Path(source)
        if not path.is_file():
            raise TaskError(f"neural-art: image file {str(path.resolve())!r} does not exist")
        try:
            from PIL import Image
        except ImportError as error:
            raise TaskError(f"neural-art: reading {source!r} needs Pillow: pip install pillow") from error
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:  # PIL's readers raise these on damaged files
            raise TaskError(f"neural-art: image file {str(path.resolve())!r} cannot be read as an image "
                            f"({type(error).__name__}: {error})") from None
    else:
        if source not in SKIMAGE_IMAGES:
            raise TaskError(f"neural-art: unknown image {source!r}: give a path to an image file or one of "
                            f"skimage.data's {', '.join(SKIMAGE_IMAGES)}")
        try:
            import skimage.data
        except ImportError as error:
            raise TaskError(f"neural-art: the image {source!r} comes from scikit-image: pip install "
                            "'torch_lstm_optim[art]' (or give a path to an image file)") from error
        array = np.asarray(getattr(skimage.data, source)())
    if array.ndim == 2:
        array = array[..., None].repeat(3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise TaskError(f"neural-art: image {source!r} has shape {tuple(array.shape)}: expected an RGB, RGBA or "
                        "greyscale image")
    scale = 1.0 if array.dtype == bool else 255.0
    image = torch.from_numpy(np.array(array[..., :3], dtype=np.float32)).permute(2, 0, 1).contiguous() / scale
    if min(image.shape[1:]) < MIN_PIXELS:
        raise TaskError(f"neural-art: image {source!r} is {image.shape[2]}x{image.shape[1]} pixels: it must be at "
                        f"least {MIN_PIXELS} pixels on each side")
    return image


def resize(image: Tensor, top: int, left: int, side: int, resolution: int) -> Tensor:
    """The ``side`` x ``side`` square of ``image`` at (``top``, ``left``), resized (antialiased) to ``resolution``."""
    square = image[None, :, top:top + side, left:left + side]
    return F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def centre_square(image: Tensor, resolution: int) -> Tensor:
    """The largest centred square of ``image``, resized to ``resolution``."""
    height, width = image.shape[1:]
    side = min(height, width)
    return resize(image, (height - side) // 2, (width - side) // 2, side, resolution)


def gram(features: Tensor) -> Tensor:
    """The Gram matrix of ``(1, C, H, W)`` feature maps over their positions: ``F F^T / (H W)``, ``(C, C)``."""
    flat = features.reshape(features.shape[1], -1)
    return flat @ flat.T / flat.shape[1]


def normalise(x: Tensor) -> Tensor:
    """``(1, 3, H, W)`` pixels in [0, 1] standardised with ImageNet's channel means and deviations (VGG's input)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class RandomFeatures:
    """A fixed random multi-scale conv net: ``levels`` average-pooled scales of the image, ``filters`` ReLU filters
    of ``kernel`` x ``kernel`` at each (Gaussian weights, variance 1/fan-in, no bias, from ``seed``). Returns the
    content features (scale 1/2) and the style features (every scale)."""

    def __init__(self, filters: int, kernel: int, levels: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        fan_in = 3 * kernel * kernel
        self.weights = [torch.randn(filters, 3, kernel, kernel, generator=gen) / fan_in ** 0.5 for _ in range(levels)]
        self.content_level = min(1, levels - 1)

    def __call__(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = normalise(x)
        maps = []
        for level, weight in enumerate(self.weights):
            scaled = F.interpolate(x, scale_factor=0.5 ** level, mode="bilinear", antialias=True) if level else x
            maps.append(F.relu(F.conv2d(scaled, weight.to(x.dtype), padding=weight.shape[-1] // 2)))
        return maps[self.content_level], maps


class VGG19Features:
    """VGG-19's conv layers up to relu5_1 with ImageNet weights, max pooling replaced by average pooling (Gatys et
    al.); returns relu4_2 (content) and relu1_1 ... relu5_1 (style)."""

    def __init__(self, body: nn.Sequential) -> None:
        self.by_dtype = {torch.float32: body}

    def __call__(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if x.dtype not in self.by_dtype:
            self.by_dtype[x.dtype] = copy.deepcopy(self.by_dtype[torch.float32]).to(x.dtype)
        wanted = {index: name for name, index in VGG19_LAYERS.items()}
        found: dict[str, Tensor] = {}
        h = normalise(x)
        for index, layer in enumerate(self.by_dtype[x.dtype]):
            h = layer(h)
            if index in wanted:
                found[wanted[index]] = h
        return found[VGG19_CONTENT], [found[name] for name in VGG19_STYLE]


def vgg19_body() -> nn.Sequential:
    """torchvision's ``vgg19().features`` up to relu5_1 with the ImageNet weights (torchvision's cache, or its
    download), average pooling, frozen; a :class:`TaskError` if torchvision or the weights cannot be had."""
    try:
        from torchvision.models import VGG19_Weights, vgg19
    except ImportError as error:
        raise TaskError("neural-art: features='vgg19' needs torchvision: pip install 'torch_lstm_optim[train]' "
                        "(or use features='random')") from error
    weights = VGG19_Weights.IMAGENET1K_V1
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    filename = weights.url.rsplit("/", 1)[-1]
    try:
        state = weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError; a cut download fails to load
        raise TaskError(
            f"neural-art: features='vgg19' needs torchvision's VGG-19 ImageNet weights, which are neither in "
            f"{folder} nor downloadable here ({type(error).__name__}: {error}). Fetch {weights.url} on a machine "
            f"with internet and copy {filename} into {folder} (or set TORCH_HOME to a folder whose hub/checkpoints "
            "holds it), or use features='random'") from None
    model = vgg19()
    model.load_state_dict(state)
    body = model.features[:VGG19_LAYERS["relu5_1"] + 1]
    for index, layer in enumerate(body):
        if isinstance(layer, nn.MaxPool2d):
            body[index] = nn.AvgPool2d(2)
        elif isinstance(layer, nn.ReLU):
            body[index] = nn.ReLU(inplace=False)  # the style layers are read after the ReLUs
    return body.eval().requires_grad_(False)


@lru_cache(maxsize=4)
def feature_net(features: str, filters: int, kernel: int, levels: int, seed: int) -> RandomFeatures | VGG19Features:
    """The feature net of these options, built once per process (VGG-19 is read from disk once)."""
    if features == "vgg19":
        return VGG19Features(vgg19_body())
    return RandomFeatures(filters, kernel, levels, seed)


@dataclass
class NeuralArt:
    """Style transfer as an optimizee: the pixels of one image, content from a photograph of the split, one style."""

    style: str = TRAINING_STYLE
    resolution: int = 64
    content_weight: float = 1.0
    style_weight: float = 50.0
    tv_weight: float = 1.0
    features: str = "vgg19"
    filters: int = 32
    kernel: int = 5
    levels: int = 4
    feature_seed: int = 0
    crop: float = 0.5
    content_train: tuple[str, ...] = CONTENT["train"]
    content_val: tuple[str, ...] = CONTENT["val"]
    content_test: tuple[str, ...] = CONTENT["test"]
    name: str = "neural-art"
    _style_grams: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("content_train", "content_val", "content_test"):
            value = getattr(self, key)
            value = (value,) if isinstance(value, str) else tuple(value)
            if not value or not all(isinstance(v, str) for v in value):
                raise TaskError(f"task {self.name!r}: {key} must be a non-empty tuple of image names or paths, "
                                f"found {getattr(self, key)!r}")
            setattr(self, key, value)
        splits = {"train": self.content_train, "val": self.content_val, "test": self.content_test}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(splits[a]) & set(splits[b]))
            if shared:
                raise TaskError(f"task {self.name!r}: content images must differ between splits; {a} and {b} "
                                f"share {shared}")
        if self.features not in FEATURES:
            raise TaskError(f"task {self.name!r}: features must be one of {FEATURES}, found {self.features!r}")
        if not isinstance(self.resolution, int) or self.resolution < MIN_PIXELS:
            raise TaskError(f"task {self.name!r}: resolution must be an integer >= {MIN_PIXELS}, found "
                            f"{self.resolution!r}")
        if self.features == "random" and (min(self.filters, self.kernel, self.levels) < 1
                                          or self.resolution < 2 ** self.levels):
            raise TaskError(f"task {self.name!r}: random features need filters, kernel and levels >= 1 and a "
                            f"resolution of at least 2**levels; found filters={self.filters}, kernel={self.kernel}, "
                            f"levels={self.levels}, resolution={self.resolution}")
        if not 0 < self.crop <= 1:
            raise TaskError(f"task {self.name!r}: crop must be in (0, 1], found {self.crop!r}")
        if min(self.content_weight, self.style_weight, self.tv_weight) < 0:
            raise TaskError(f"task {self.name!r}: the loss weights must be >= 0, found content_weight="
                            f"{self.content_weight}, style_weight={self.style_weight}, tv_weight={self.tv_weight}")
        for source in (self.style, *self.content_train, *self.content_val, *self.content_test):
            load_image(source)  # every image now: a bad name or file is found before any work
        self.net  # VGG-19's weights now: refused before any work if they cannot be had

    @property
    def features_text(self) -> str:
        """Which features this task uses, for the titles of figures and tables (``evaluate`` and ``reproduce`` put
        a task's ``features_text`` there)."""
        if self.features == "vgg19":
            return "VGG-19 ImageNet features (relu4_2 content; relu1_1-relu5_1 style)"
        return (f"random features ({self.levels} scales x {self.filters} filters {self.kernel}x{self.kernel}, seed "
                f"{self.feature_seed}), not VGG-19")

    @property
    def net(self) -> RandomFeatures | VGG19Features:
        return feature_net(self.features, self.filters, self.kernel, self.levels, self.feature_seed)

    def content_image(self, seed: int, split: str) -> tuple[Tensor, torch.Generator]:
        """Problem ``seed`` of ``split``'s content: an image of the split, a random square crop, resized; and the
        generator the problem's other draws continue from."""
        gen = torch.Generator().manual_seed(split_seed(seed, split))
        sources = {"train": self.content_train, "val": self.content_val, "test": self.content_test}[split]
        image = load_image(sources[int(torch.randint(len(sources), (), generator=gen))])
        height, width = image.shape[1:]
        fraction = self.crop + (1 - self.crop) * float(torch.rand((), generator=gen))
        side = max(MIN_PIXELS, round(fraction * min(height, width)))
        top = int(torch.randint(height - side + 1, (), generator=gen))
        left = int(torch.randint(width - side + 1, (), generator=gen))
        return resize(image, top, left, side, self.resolution), gen

    def style_image(self) -> Tensor:
        return centre_square(load_image(self.style), self.resolution)

    def style_grams(self, dtype: torch.dtype) -> list[Tensor]:
        """The style image's Gram matrices (computed once per dtype)."""
        if dtype not in self._style_grams:
            with torch.no_grad():
                _, maps = self.net(self.style_image()[None].to(dtype))
                self._style_grams[dtype] = [gram(m) for m in maps]
        return self._style_grams[dtype]

    def loss_of(self, image: Tensor, content_features: Tensor) -> Tensor:
        """The weighted content, style and smoothness loss of ``image`` ``(3, H, W)``."""
        x = image[None]
        content, maps = self.net(x)
        style = sum((gram(m) - g).square().mean() for m, g in zip(maps, self.style_grams(x.dtype)))
        smooth = (x[..., 1:, :] - x[..., :-1, :]).square().mean() + (x[..., 1:] - x[..., :-1]).square().mean()
        return (self.content_weight * (content - content_features.to(x.dtype)).square().mean()
                + self.style_weight * style + self.tv_weight * smooth)

    def sample(self, seed: int, split: str = "train") -> Problem:
        content, gen = self.content_image(seed, split)
        with torch.no_grad():
            target, _ = self.net(content[None])
        start = torch.rand(3, self.resolution, self.resolution, generator=gen)  # white noise, as Gatys et al.
        return Problem(params={"image": start}, loss=lambda params, step: self.loss_of(params["image"], target))
