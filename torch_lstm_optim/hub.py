"""Hugging Face hub access: download a weights repo into the hub cache (``huggingface_hub`` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .weights import CONFIG_FILE, WEIGHTS_FILE, WeightsError, WeightsSource


def download(repo_id: str, *, revision: str | None = None, **hub_kwargs: Any) -> tuple[Path, WeightsSource]:
    """Fetch ``config.json`` and ``model.safetensors`` of ``repo_id`` at ``revision``; return the snapshot folder."""
    from huggingface_hub import hf_hub_download

    try:
        paths = [hf_hub_download(repo_id, name, revision=revision, **hub_kwargs) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    except Exception as error:  # noqa: BLE001 - every hub failure becomes one clear error
        raise WeightsError(f"could not load weights {repo_id!r} (revision {revision or 'main'}) from the hub: "
                           f"{type(error).__name__}: {error}. Use a local folder or a bundled name instead.") from error
    folder = Path(paths[0]).parent
    return folder, WeightsSource(repo_id, str(folder), revision=folder.name)
