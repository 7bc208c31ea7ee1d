"""Where the command-line tools write: atomic files, and output folders that never silently replace other results.

Shared by meta-training and evaluation (which may import this package, never the reverse).

Every tool records its exact command line in ``results.json`` (``"command"``). Before a run starts,
:func:`check_out` refuses an ``--out`` that is a file, or a folder whose ``results.json`` was written by another
command (another tool, other settings, other weights): results a user kept are replaced only when asked for
(``--overwrite``). Running the same command again rewrites its own results, as a rerun should (the suite resumes
them).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch


class OutputError(ValueError):
    """An output folder that cannot be written without destroying something: the message says what and why."""


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """``write(handle)`` into a temporary file, fsync, then rename: a kill never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written through :func:`atomic_write`."""
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=1).encode("utf-8")))


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command as ``results.json`` records it; without ``--overwrite``, which says how to write, not what ran."""
    return f"python -m torch_lstm_optim.{module} " + shlex.join(arg for arg in argv if arg != "--overwrite")


def check_out(out: Path, command: str, overwrite: bool = False,
              same: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Refuse ``out`` if it is a file, or holds a ``results.json`` of another run (unless ``overwrite``).

    Another run is one with another ``command``, or, given ``same``, one whose results ``same`` rejects (for a tool
    that adds to a folder's results, like ``reproduce --only``)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: is a file, not a folder")
    path = out / "results.json"
    if overwrite or not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        theirs = previous.get("command") if isinstance(previous, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputError(f"--out {out}: holds a results.json this tool cannot read ({type(error).__name__}); "
                          "choose another --out, or pass --overwrite to replace it") from None
    if not (same(previous) if same is not None and isinstance(previous, dict) else theirs == command):
        raise OutputError(f"--out {out}: holds the results of another command ({theirs or 'not recorded'}); "
                          "choose another --out, or pass --overwrite to replace them")


def machine_description() -> str:
    """CPU model, threads used and torch version: what a timing or a wall time was measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} cores)" if names else cpu
    device = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}{device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
