"""The engine is pure NumPy: importing it pulls in no service or storage dependency."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_nothing_of_the_service() -> None:
    code = (
        "import sys, trainwire.engine\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'google', 'sqlalchemy', 'alembic', 'torch')\n"
        "       or (m.startswith('trainwire.') and not m.startswith('trainwire.engine'))]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
