"""The user commands of `trainwire` (datasets, jobs, predict), talking to a server via the SDK."""

from __future__ import annotations

import argparse
from typing import Any


def add_user_commands(commands: Any) -> None:
    """Registers the user commands on the `trainwire` parser's subcommands."""
    del commands  # filled in by the SDK/CLI work


__all__ = ["add_user_commands", "argparse"]
