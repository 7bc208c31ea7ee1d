"""``results/`` stays a catalogue (issue 24): every run folder is cited by a page and indexed, says what it shows and
how it was made, and no code lives there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "pretrained").glob("*/README.md"))]


def folders() -> list[Path]:
    return sorted(path for path in RESULTS.iterdir() if path.is_dir())


def test_every_run_folder_is_cited_indexed_and_described() -> None:
    pages = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    index = (RESULTS / "README.md").read_text(encoding="utf-8")
    assert folders()
    for folder in folders():
        name = folder.name
        assert re.search(rf"results/{re.escape(name)}(?![\w-])", pages), f"results/{name}: no page cites it"
        assert f"[`{name}`]({name}/)" in index, f"results/{name}: not in results/README.md"
        assert (folder / "README.md").is_file(), f"results/{name}: no README.md (summary and command)"
        assert (folder / "results.json").is_file() or (folder / "log.jsonl").is_file(), f"results/{name}: no record"


def test_no_code_lives_under_results() -> None:
    assert sorted(str(path.relative_to(ROOT)) for path in RESULTS.rglob("*.py")) == []
