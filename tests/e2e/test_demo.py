"""`make demo` runs examples/demo.py: it must train, predict and shut down cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_demo_trains_predicts_and_exits_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"jobs/[0-9a-f]{32} SUCCEEDED after 40 epochs", result.stdout)
    accuracy = re.search(r"Test accuracy on 30 held-out flowers: ([0-9.]+)", result.stdout)
    assert accuracy is not None and float(accuracy.group(1)) >= 0.85
    assert "Server stopped cleanly" in result.stdout
