"""The code keeps the style of ``setup.cfg``'s ``[flake8]`` section: unused imports and names, undefined names and
lines over 120 characters are caught here, before review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flake8_is_clean() -> None:
    folders = [str(ROOT / name) for name in ("torch_lstm_optim", "pretrained", "benchmarks", "examples", "tests")]
    done = subprocess.run([sys.executable, "-m", "flake8", "--config", str(ROOT / "setup.cfg"), *folders],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
