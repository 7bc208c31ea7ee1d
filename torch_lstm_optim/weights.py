"""The one place that reads network weights: ``"default"`` | bundled name | local folder | hub repo id -> network.

A weights folder (and a hub repo) holds ``config.json`` and ``model.safetensors``. Everything read is validated
before a network is built: the config's fields and types and sizes, the tensors' names, shapes, dtypes and
finiteness. Only safetensors are ever read: pickles are refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .network import CoordinatewiseLSTM, NetworkConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_WEIGHTS = "generalist"  # meta-trained on a mixture of problems; the paper's weights stay by name


class WeightsError(ValueError):
    """Weights could not be found or are not valid; the message names the file and what is wrong."""


class StateDictError(ValueError):
    """An optimizer state dict does not fit this optimizer; nothing was changed."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a network came from, recorded so a run can be traced to the exact weights."""

    weights: str
    folder: str
    revision: str | None = None


def fingerprint(network: CoordinatewiseLSTM) -> str:
    """sha256 of a network's config and weights. Results cached under a weights name or folder are reused only if
    this matches: the same name or folder can hold other weights later (a new release, a finished run)."""
    digest = hashlib.sha256(json.dumps(network.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def bundled_root() -> Path:
    """The folder of the weights shipped with the package (inside the wheel, or ``pretrained/`` of a checkout)."""
    try:
        return Path(str(resources.files("torch_lstm_optim.pretrained")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "pretrained"


def bundled_names() -> list[str]:
    """Names of the bundled weights, e.g. ``["generalist", "mnist-mlp", "quadratic"]``."""
    root = bundled_root()
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []


def load_network(weights: str | Path | None = None, *, revision: str | None = None,
                 **hub_kwargs: Any) -> CoordinatewiseLSTM:
    """Resolve ``weights`` (``None``/``"default"``, a bundled name, a folder, or a hub repo id) and load it.

    ``hub_kwargs`` go to ``huggingface_hub.hf_hub_download`` (``cache_dir``, ``token``, ``local_files_only``, ...).
    The returned network has a ``source`` attribute (:class:`WeightsSource`).
    """
    folder, source = resolve(weights, revision=revision, **hub_kwargs)
    network = read_folder(folder)
    network.source = source
    return network


def resolve(weights: str | Path | None, *, revision: str | None = None,
            **hub_kwargs: Any) -> tuple[Path, WeightsSource]:
    """Find the folder holding ``config.json`` + ``model.safetensors`` for ``weights``: bundled, local, or hub."""
    if weights is None or weights == "default":
        weights = DEFAULT_WEIGHTS
    names = bundled_names()
    if isinstance(weights, str) and weights in names:
        folder = bundled_root() / weights
        return folder, WeightsSource(weights, str(folder))
    path = Path(weights)
    if path.is_dir():
        return path, WeightsSource(str(weights), str(path))
    if path.exists():
        raise WeightsError(f"{path}: is a file, not a weights folder (a folder holding {CONFIG_FILE} and "
                           f"{WEIGHTS_FILE}); pass the folder")
    text = str(weights)
    if weights == DEFAULT_WEIGHTS:
        raise WeightsError(f"the default weights {DEFAULT_WEIGHTS!r} are not bundled with this installation "
                           f"(looked in {bundled_root()}); pass weights= a folder, a bundled name or a hub repo id")
    if isinstance(weights, Path) or text.count("/") != 1 or path.suffix or text.startswith((".", "/")):
        raise WeightsError(f"unknown weights {text!r}: not a bundled name (bundled: {', '.join(names) or 'none'}), "
                           f"not an existing folder, and not a hub repo id of the form 'org/name'")
    from .hub import download

    return download(text, revision=revision, **hub_kwargs)


def read_folder(folder: str | Path) -> CoordinatewiseLSTM:
    """Validate and load ``folder/config.json`` + ``folder/model.safetensors`` into a network."""
    folder = Path(folder)
    config = read_config(folder / CONFIG_FILE)
    tensors = read_tensors(folder / WEIGHTS_FILE, config)
    network = CoordinatewiseLSTM(config)
    network.load_state_dict(tensors, strict=True)
    network.eval()
    return network


def read_config(path: Path) -> NetworkConfig:
    """Parse and validate a ``config.json`` (fields, types, sizes) before anything is allocated."""
    if not path.is_file():
        raise WeightsError(f"{path}: file not found (a weights folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    try:
        return NetworkConfig.from_dict(data)
    except (ValueError, TypeError) as error:
        raise WeightsError(f"{path}: {error}") from None


def read_tensors(path: Path, config: NetworkConfig) -> dict[str, torch.Tensor]:
    """Read a safetensors file and check it holds exactly the tensors ``config`` implies, finite, float32.

    Names and shapes are checked from the file's header before any tensor is read, so a file naming a huge or
    unexpected tensor is refused without allocating it; what is then read is bounded by the config's sizes.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise WeightsError(f"{path}: file not found (a weights folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a valid safetensors file ({error})") from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CoordinatewiseLSTM(config).state_dict().items()}
    with handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        if missing or extra:
            raise WeightsError(f"{path}: tensors do not match {CONFIG_FILE}: missing {missing}, unexpected {extra}")
        for name, shape in shapes.items():
            if shape != expected[name]:
                raise WeightsError(f"{path}: tensor {name!r} has shape {shape}, "
                                   f"expected {expected[name]} for the config in {CONFIG_FILE}")
        tensors = {name: handle.get_tensor(name) for name in shapes}
    for name, tensor in tensors.items():
        if tensor.dtype != torch.float32:
            raise WeightsError(f"{path}: tensor {name!r} has dtype {tensor.dtype}, expected torch.float32")
        if not torch.isfinite(tensor).all():
            raise WeightsError(f"{path}: tensor {name!r} holds NaN or inf values")
    return tensors
