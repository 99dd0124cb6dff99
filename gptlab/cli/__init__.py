"""Thin command-line entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable

from gptlab.errors import GptlabError


def run_command(prog: str, body: Callable[[], None]) -> int:
    """Run a command's body: a problem the user can fix becomes one line on stderr and status 2."""
    try:
        body()
    except GptlabError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0
