"""The one place that reads network weights: ``"default"`` | bundled name | local folder | hub repo id -> network.

A weights folder (and a hub repo) holds ``config.json`` and ``model.safetensors``. Everything read is validated
before a network is built: the config's fields and types and sizes, the tensors' names, shapes, dtypes and
finiteness. Only safetensors are ever read: pickles are refused, never unpickled.

A hub repo id is fetched into the hub cache by ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``,
tokens, retries): this module decides WHICH files are fetched (never a pickle), pins every file of a load to one
commit, and turns the library's exceptions into :class:`WeightsError` messages that say what was tried and what to
do instead. Publishing is :mod:`torch_lstm_optim.hub`'s, which validates with this reader: the imports run
``hub -> weights -> network``, and :meth:`CoordinatewiseLSTM.from_pretrained` reaches :func:`load_network` through
the loader this module sets on the class (so ``network`` imports neither).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

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


CoordinatewiseLSTM._loader = staticmethod(load_network)  # what CoordinatewiseLSTM.from_pretrained calls


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
    return download(text, revision=revision, **hub_kwargs)


def download(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
             token: str | bool | None = None, force_download: bool = False,
             local_files_only: bool = False) -> tuple[Path, WeightsSource]:
    """Fetch ``config.json`` and ``model.safetensors`` of hub repo ``repo_id`` into the hub cache.

    ``revision`` (a branch, tag or commit hash; ``None`` is ``"main"``) is resolved to a commit by the first file's
    request, and the second file is fetched at that commit, so a push landing in between cannot mix two versions.
    A file already cached for a commit hash costs no request at all; for a branch, one metadata request checks it is
    still current (``huggingface_hub``'s cache semantics). With ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``
    only the cache is read. The other arguments are ``hf_hub_download``'s.

    Returns the snapshot folder and a :class:`WeightsSource` whose ``revision`` is the resolved commit hash.
    Raises :class:`WeightsError` naming the repo, revision, endpoint and file when anything is missing or unreachable.
    """
    commit = revision
    for filename in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=commit, cache_dir=cache_dir, token=token,
                                        force_download=force_download, local_files_only=local_files_only))
        except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OSError) as error:
            cache = Path(cache_dir or constants.HF_HUB_CACHE)
            raise WeightsError(_explain(error, repo_id, revision, filename, cache, local_files_only)) from error
        commit = path.parent.name  # the cache's snapshots/<commit hash>/<filename>
    folder = path.parent
    return folder, WeightsSource(repo_id, str(folder), revision=commit)


def _explain(error: Exception, repo_id: str, revision: str | None, filename: str, cache: Path,
             local_files_only: bool) -> str:
    """One message for a failed hub download: what was tried, what went wrong, and what to do instead."""
    tried = f"hub repo {repo_id!r} at revision {revision or 'main'!r} on {constants.ENDPOINT}"
    instead = (f"pass weights= a local folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, or a bundled name "
               f"(torch_lstm_optim.bundled_names(): {', '.join(bundled_names()) or 'none'})")
    alternatives = f"To load without the hub, {instead}."
    if isinstance(error, GatedRepoError):
        return (f"{tried} is gated: accept its conditions on its hub page, then log in (`hf auth login`) or pass "
                f"token=. {alternatives}")
    if isinstance(error, RepositoryNotFoundError):
        return (f"{tried}: repository not found (it does not exist, or it is private and no valid token was given: "
                f"log in with `hf auth login` or pass token=). {alternatives}")
    if isinstance(error, RevisionNotFoundError):
        return f"{tried}: revision not found (expected a branch, a tag or a commit hash of the repo)."
    if isinstance(error, LocalEntryNotFoundError):
        if local_files_only or constants.HF_HUB_OFFLINE:
            switch = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
            return (f"{tried}: {filename} is not in the hub cache {cache}, and downloads are off ({switch}). "
                    f"Download it once with network access, or {instead}.")
        cause = error.__cause__ or error
        return (f"{tried}: could not reach the hub to fetch {filename}, and it is not in the hub cache {cache} "
                f"({type(cause).__name__}: {cause}). {alternatives}")
    if isinstance(error, EntryNotFoundError):
        if filename == WEIGHTS_FILE:
            return (f"{tried} has no {WEIGHTS_FILE}: torch_lstm_optim loads only safetensors and never unpickles "
                    f"a file (pytorch_model.bin or any other pickle is refused). The repo's owner can publish "
                    f"safetensors with `python -m torch_lstm_optim.hub push FOLDER {repo_id}`.")
        return f"{tried} has no {filename}: not a torch_lstm_optim weights repo ({CONFIG_FILE} + {WEIGHTS_FILE})."
    if isinstance(error, HFValidationError):
        return f"{repo_id!r} is not a valid hub repo id or revision: {error}"
    return f"{tried}: downloading {filename} failed ({type(error).__name__}: {error})."


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
