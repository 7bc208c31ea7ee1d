"""The example scripts run as documented (with random weights: their quality is the meta-trainer's business)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_trains_with_a_weights_folder(weights_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    losses = quickstart.main(["--weights", str(weights_folder), "--steps", "3"])
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert len(set(losses)) == 3  # the parameters moved
    assert "step    2  loss" in capsys.readouterr().out
