"""The example scripts run as documented (with random weights: their quality is the meta-trainer's business)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

from test_tasks import write_mnist  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_trains_both_and_compares_with_adam(tmp_path: Path, weights_folder: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    data = write_mnist(tmp_path / "data")  # tiny random MNIST files: nothing is downloaded
    scores = quickstart.main(["--data-dir", str(data), "--weights", str(weights_folder), "--steps", "3"])
    assert sorted(scores) == ["adam", "learned"]
    assert all(math.isfinite(value) for score in scores.values() for value in score.values())
    out = capsys.readouterr().out
    assert "step    2  training loss: learned" in out and "learned / adam: test loss x" in out
