"""The built wheel carries the bundled weights under ``torch_lstm_optim/pretrained`` and finds them at run time.

A plain ``pip install .`` must work, not only an editable install, so the wheel is built from a copy of the
project (plus a fake bundled weights folder that exists only in that copy) and imported from its unpacked files
in a fresh interpreter, away from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import make_network

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
# What the build reads; everything else in the checkout (tests, runs, venvs) stays out of the copy.
BUILD_INPUTS = ["pyproject.toml", "setup.cfg", "README.md", "LICENSE", "MANIFEST.in", "torch_lstm_optim", "pretrained"]
WEIGHT_FILES = ("config.json", "model.safetensors")
FAKE_NAME = "packaging-test-fake"


def repo_bundled_names() -> list[str]:
    """Names of the weight folders in the checkout's ``pretrained/`` (both files present)."""
    root = REPO / "pretrained"
    return sorted(p.name for p in root.iterdir() if all((p / f).is_file() for f in WEIGHT_FILES))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a wheel from a copy of the project holding one extra bundled folder; return the wheel's path."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, source / name)
    make_network(hidden_size=3).save_pretrained(source / "pretrained" / FAKE_NAME)
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
                            cwd=source, capture_output=True, text=True)
    assert result.returncode == 0, f"wheel build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (wheel,) = dist.glob("*.whl")
    return wheel


def test_wheel_contains_every_bundled_weights_folder(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in [*repo_bundled_names(), FAKE_NAME]:
        for file in WEIGHT_FILES:
            assert f"torch_lstm_optim/pretrained/{name}/{file}" in names


def test_wheel_contains_every_module_of_the_package(wheel: Path) -> None:
    """pyproject.toml lists the packages by hand: a new subpackage (meta/, evaluation/) must be listed there too."""
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = sorted(str(path.relative_to(REPO)) for path in (REPO / "torch_lstm_optim").rglob("*.py"))
    assert modules and [module for module in modules if module not in names] == []


def test_package_imported_from_the_wheel_finds_the_bundled_weights(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    script = (
        "import json, torch_lstm_optim as t\n"
        f"network = t.load_network({FAKE_NAME!r})\n"
        "print(json.dumps({'file': t.__file__, 'names': t.bundled_names(), 'hidden': network.config.hidden_size}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(unpacked), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(unpacked)
    assert found["names"] == sorted([*repo_bundled_names(), FAKE_NAME])
    assert found["hidden"] == 3
