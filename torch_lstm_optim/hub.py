"""The Hugging Face hub: download a weights repo into the hub cache, and publish a weights folder.

``huggingface_hub`` does the work (its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, tokens, retries); this module
decides WHICH files are fetched and pushed (``config.json``, ``model.safetensors``, ``README.md``: never a pickle),
pins every file of a load to one commit, and turns the library's exceptions into :class:`WeightsError` messages that
say what was tried and what to do instead.

Command line::

    python -m torch_lstm_optim.hub push FOLDER REPO_ID [--private] [--token TOKEN] [--commit-message MESSAGE]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from huggingface_hub.hf_api import CommitInfo
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    validate_repo_id,
)

from .weights import CONFIG_FILE, WEIGHTS_FILE, WeightsError, WeightsSource, bundled_names, read_folder

CARD_FILE = "README.md"
PUSHED_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
DEFAULT_COMMIT_MESSAGE = "Upload torch_lstm_optim weights"


class PushError(RuntimeError):
    """A push the hub refused or could not take (an HTTP or transport error); the weights stay in the folder."""


@contextmanager
def _as_push_error(folder: Path, repo_id: str) -> Iterator[None]:
    """Turn whatever the hub client raises into :class:`PushError` naming the folder, the repo and the cause."""
    try:
        yield
    except Exception as error:  # the client's HTTP and transport errors share no base class with OSError
        raise PushError(f"pushing {folder} to {repo_id} failed ({type(error).__name__}: {error})") from error


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


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = DEFAULT_COMMIT_MESSAGE) -> CommitInfo:
    """Publish a weights folder to hub repo ``repo_id`` (created if missing) as one commit.

    The folder is validated first (:func:`torch_lstm_optim.weights.read_folder`), so broken weights are never
    published. Its model card ``README.md`` is written, or updated in place, with the metadata the hub shows
    (``library_name`` and tags, via :class:`huggingface_hub.ModelCard`); an existing card keeps its body and other
    metadata (the meta-trainer's training command and evaluation table). Only ``config.json``,
    ``model.safetensors`` and ``README.md`` are uploaded, whatever else the folder holds. ``private`` applies when
    the repo is created; ``token`` defaults to the logged-in one (``hf auth login`` or ``HF_TOKEN``).

    Returns the commit (``.oid`` is the hash to pin with ``revision=``, ``.commit_url`` its page). Raises
    :class:`WeightsError` for a bad folder or repo id (before any request) and :class:`PushError` if the hub fails.
    """
    folder = Path(folder)
    network = read_folder(folder)
    check_repo_id(repo_id)
    api = HfApi(token=token)
    with _as_push_error(folder, repo_id):
        repo = api.create_repo(repo_id, private=private, exist_ok=True)  # the hub answers before the card is touched
    card = network.generate_model_card()
    card_path = folder / CARD_FILE
    if card_path.is_file():
        existing = ModelCard.load(card_path)
        existing.data.library_name = card.data.library_name
        existing.data.tags = sorted(set(existing.data.tags or []) | set(card.data.tags or []))
        card = existing
    if not card_path.is_file() or card_path.read_text(encoding="utf-8") != card.content:
        card.save(card_path)
    with _as_push_error(folder, repo_id):
        return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, allow_patterns=list(PUSHED_FILES),
                                 commit_message=commit_message, repo_type="model")


def check_repo_id(repo_id: str) -> None:
    """Raise :class:`WeightsError` unless ``repo_id`` is a valid hub repo id (``org/name``); no request is made."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise WeightsError(f"{repo_id!r} is not a valid hub repo id (expected 'org/name'): {error}") from None
    if "/" not in repo_id:
        raise WeightsError(f"{repo_id!r} is not a valid hub repo id: expected 'org/name'")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m torch_lstm_optim.hub push FOLDER REPO_ID``: publish a weights folder; prints the commit URL."""
    parser = argparse.ArgumentParser(prog="python -m torch_lstm_optim.hub",
                                     description="Publish torch_lstm_optim weights on the Hugging Face hub.")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser(
        "push", help="validate a weights folder, write its model card, upload it as one commit",
        description=f"Validate FOLDER, write or update its model card, and upload {', '.join(PUSHED_FILES)} to "
                    "REPO_ID in one commit (nothing else in the folder is uploaded).")
    push.add_argument("folder", metavar="FOLDER", type=Path,
                      help=f"weights folder holding {CONFIG_FILE} and {WEIGHTS_FILE} (and optionally {CARD_FILE})")
    push.add_argument("repo_id", metavar="REPO_ID", help="hub repo to publish to, 'org/name'; created if missing")
    push.add_argument("--private", action="store_true",
                      help="create the repo as private (no effect on a repo that already exists)")
    push.add_argument("--token", default=None,
                      help="hub token with write access (default: the one saved by `hf auth login` or HF_TOKEN)")
    push.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE,
                      help=f"message of the commit (default: {DEFAULT_COMMIT_MESSAGE!r})")
    args = parser.parse_args(argv)
    try:
        commit = push_to_hub(args.folder, args.repo_id, token=args.token, private=args.private,
                             commit_message=args.commit_message)
    except (WeightsError, PushError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {args.repo_id}: {commit.commit_url} (pin it with revision={commit.oid!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
