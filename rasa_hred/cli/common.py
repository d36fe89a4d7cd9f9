"""What every command module shares: handlers imported on first use."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int | None]


def lazy(module: str, function: str) -> Handler:
    """A handler that imports ``module`` only when its command runs (torch and Rasa are slow
    to import, and ``--help`` should be instant)."""

    def handler(args: argparse.Namespace) -> int | None:
        result: int | None = getattr(importlib.import_module(module), function)(args)
        return result

    return handler
