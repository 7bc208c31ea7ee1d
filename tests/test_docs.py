"""The README and docs/ stay true to the code (issue 23), so that the text cannot drift from it.

Every ``python -m torch_lstm_optim.X`` command the pages write names a module that runs, and every flag written after
it is one that module's ``--help`` lists; every ``benchmarks/`` or ``examples/`` script they run exists and lists its
flags likewise. Every repository path they name (``results/...``, ``pretrained/...``, ``docs/...``, ...), every relative
link, and every ``test_file.py::test_name`` they cite exists. ``--help`` runs in this process (``runpy``, as
``python -m`` and ``python FILE`` run them), once per command: the whole check takes seconds.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w./~<-])((?:results|pretrained|benchmarks|examples|docs|torch_lstm_optim|tests)/[\w./-]*)")
# Run folders that docs/meta-training.md names as removed from results/ ("Experiments not shipped": their record is
# kept there, their folders in the history). Each must stay gone and stay named.
REMOVED = {f"results/mnist-mlp-{name}" for name in ("hidden40", "layers2", "relu", "steps200")}
OUTPUT_FLAGS = {"--out", "--json"}  # what follows names a folder or file the command writes: it need not exist yet
RUNNER = {"python", "python3", "torchrun"}  # what runs a script named after it


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def code_spans(text: str) -> list[str]:
    """Each command line of a fenced block (continuation lines joined), and each inline code span (wrapped lines
    joined)."""
    spans: list[str] = []
    outside = re.split(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    for index, part in enumerate(outside):
        if index % 2:  # a fenced block
            spans += part.replace("\\\n", " ").splitlines()
        else:
            spans += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", part)]
    return spans


def commands(text: str) -> list[list[str]]:
    """The words of each shell command in the code of a page (split at ``&&``, ``;`` and ``|``; comments dropped)."""
    found = []
    for span in code_spans(text):
        for command in re.split(r"&&|;|\|", span.split(" #")[0]):
            words = command.split()
            if words:
                found.append(words)
    return found


def flags(words: list[str]) -> list[str]:
    """The ``--flags`` among ``words``, up to a bare ``--`` (what follows it is passed on to another command)."""
    found = []
    for word in words:
        if word == "--":
            break
        match = re.fullmatch(r"\[?(--[a-z][\w-]*)(=.*)?\]?", word)
        if match:
            found.append(match.group(1))
    return found


@cache
def help_text(target: str, argv: tuple[str, ...]) -> str:
    """What ``python -m target argv`` (a module) or ``python target argv`` (a script path) prints, run in this
    process."""
    old_argv, out = sys.argv, io.StringIO()
    sys.argv = [target, *argv]
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
            warnings.simplefilter("ignore")
            if target.endswith(".py"):
                runpy.run_path(str(ROOT / target), run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = old_argv
    assert exit_.value.code in (0, None), f"{target} {' '.join(argv)} exited with {exit_.value.code}"
    return out.getvalue()


def invocations() -> list[tuple[str, str, tuple[str, ...], list[str]]]:
    """``(page, target, argv for --help, flags written)`` for every command of the pages that runs a module of the
    package or a script under benchmarks/ or examples/."""
    found = []
    for page in PAGES:
        for words in commands(page.read_text(encoding="utf-8")):
            for index, word in enumerate(words):
                if word == "-m" and index + 1 < len(words) and words[index + 1].startswith("torch_lstm_optim"):
                    target, rest = words[index + 1], words[index + 2:]
                elif re.fullmatch(r"(benchmarks|examples)/\w+\.py", word) and RUNNER.intersection(words[:index]):
                    target, rest = word, words[index + 1:]
                else:
                    continue
                argv: tuple[str, ...] = ()
                if rest and re.fullmatch(r"[a-z]+", rest[0]):  # a subcommand (hub push)
                    argv = (rest[0],)
                if "--suite" in rest:  # python -m torch_lstm_optim.evaluate --suite NAME: the suite's own flags
                    argv = ("--suite", rest[rest.index("--suite") + 1])
                found.append((page_id(page), target, argv, flags(rest)))
    return found


def test_the_pages_name_commands() -> None:
    targets = {target for _, target, _, _ in invocations()}
    assert {"torch_lstm_optim.meta_train", "torch_lstm_optim.evaluate", "torch_lstm_optim.hub",
            "examples/quickstart.py", "benchmarks/step_cost.py"} <= targets


def test_every_command_runs_a_module_or_script_that_takes_its_flags() -> None:
    problems = []
    for page, target, argv, written in invocations():
        if target.endswith(".py"):
            if not (ROOT / target).is_file():
                problems.append(f"{page}: {target} does not exist")
                continue
        try:
            text = help_text(target, (*argv, "--help"))
        except (ImportError, AssertionError) as error:
            problems.append(f"{page}: {target} {' '.join(argv)} --help fails: {error}")
            continue
        for flag in written:
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                problems.append(f"{page}: {target} {' '.join(argv)} has no flag {flag}")
    assert not problems, "\n".join(sorted(set(problems)))


def named_paths(text: str) -> list[tuple[str, bool]]:
    """``(path, written by the command)`` for each repository path in ``text``: ``True`` after an output flag."""
    found = []
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".,:/") or match.group(1)
        before = text[:match.start()].split()
        found.append((path, bool(before) and before[-1].split("=")[0] in OUTPUT_FLAGS))
    return found


def test_every_path_link_and_cited_test_exists() -> None:
    problems = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path, written in named_paths(text):
            placeholder = any(re.fullmatch(r"[A-Z]+", part) for part in path.split("/"))  # results/NAME
            if not (ROOT / path).exists() and not written and not placeholder and path not in REMOVED:
                problems.append(f"{page_id(page)}: {path} does not exist")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+:|#", target) and not (page.parent / target.split("#")[0]).exists():
                problems.append(f"{page_id(page)}: the link {target} leads nowhere")
        for file, name in re.findall(r"(test_\w+\.py)::(\w+)", text):
            test_file = ROOT / "tests" / file
            # a test function, or a class that instantiate_device_type_tests names <class>CPU
            defined = rf"(def|class) ({name}|{name.removesuffix('CPU')}(?=\(TestCase\)))\b"
            if not test_file.is_file() or not re.search(defined, test_file.read_text(encoding="utf-8")):
                problems.append(f"{page_id(page)}: no test tests/{file}::{name}")
    assert not problems, "\n".join(problems)


def test_removed_run_folders_stay_gone_and_named() -> None:
    record = (ROOT / "docs" / "meta-training.md").read_text(encoding="utf-8")
    for path in REMOVED:
        assert not (ROOT / path).exists(), f"{path} is back: take it off REMOVED"
        assert path in record, f"{path}: docs/meta-training.md no longer names it: take it off REMOVED"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A made-up path, flag and module are each caught."""
    text = "See `results/no-such-run` and [x](nowhere.md); `python -m torch_lstm_optim.meta_train --no-such-flag`."
    assert [path for path, _ in named_paths(text) if not (ROOT / path).exists()] == ["results/no-such-run"]
    assert named_paths("`python -m x --out results/new-run`") == [("results/new-run", True)]
    [words] = commands(text.split(";")[1])
    assert flags(words) == ["--no-such-flag"]
    assert "--no-such-flag" not in help_text("torch_lstm_optim.meta_train", ("--help",))
    assert "--meta-batch" in help_text("torch_lstm_optim.meta_train", ("--help",))
    with pytest.raises(ImportError):
        help_text("torch_lstm_optim.no_such_module", ("--help",))
