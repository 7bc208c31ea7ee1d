"""Publishing on the Hugging Face hub: a weights folder, validated, becomes one commit of a hub repo.

``huggingface_hub`` does the work (tokens, retries, the upload); this module decides WHICH files are pushed
(``config.json``, ``model.safetensors``, ``README.md``: never a pickle), validates the folder with the reader of
:mod:`torch_lstm_optim.weights` first, and writes the model card's hub metadata. Loading from the hub is the
reader's own business (:func:`torch_lstm_optim.weights.load_network` with a repo id): the imports run
``hub -> weights -> network``, one way.

Command line::

    python -m torch_lstm_optim.hub push FOLDER REPO_ID [--private] [--token TOKEN] [--commit-message MESSAGE]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .weights import CONFIG_FILE, WEIGHTS_FILE, WeightsError, read_folder

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
