"""What every command-line tool shares: a refusal is one ``error:`` line on stderr and exit
code 2 (bad arguments, missing inputs), never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad argument or missing input: printed as one ``error:`` line, exit code 2."""


def run(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``body(args)``, with a :class:`UsageError` turned into its one line and exit code 2."""
    try:
        return body(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
