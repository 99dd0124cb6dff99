"""``gptlab-lm-eval``: lm-evaluation-harness's own command line, with the ``gptlab`` model and
gptlab's offline tasks in place. Every ``lm-eval`` flag works as documented by the harness::

    gptlab-lm-eval --model gptlab --model_args source=smollm2-135m-instruct --tasks gptlab_verdict arc_easy
    GPTLAB_DATA=/data gptlab-lm-eval --model gptlab --model_args source=runs/verdict,batch_size=8 --tasks gptlab
    python -m gptlab.cli.harness ls tasks                                     # the same, as a module

Why a command of gptlab's rather than ``lm_eval --model gptlab``: lm-eval 0.4 finds a model only in
its own table of backends (``lm_eval.models.MODEL_MAPPING``) or among classes that code already
running in the process registered with ``@register_model``; it reads no entry-point group, so no
installed package can add a model to the plain ``lm_eval`` command. This command imports
``gptlab.harness`` (which registers ``gptlab``) and hands the rest to lm-eval's ``cli_evaluate``.

gptlab's tasks join the task index through ``--include_path``, added here unless one is given
(lm-eval takes one such folder): the shipped YAMLs, or copies reading from ``$GPTLAB_DATA``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gptlab.cli import run_command

PROG = "gptlab-lm-eval"


def run(argv: list[str]) -> None:
    from gptlab.extras import require_extra

    require_extra("lm_eval", PROG)
    from lm_eval.__main__ import cli_evaluate

    from gptlab.harness.suite import data_dir, include_path

    with tempfile.TemporaryDirectory(prefix="gptlab-tasks-") as workdir:
        if argv and argv[0] not in ("-h", "--help") and "--include_path" not in argv:
            argv = [*argv, "--include_path", str(include_path(data_dir(), Path(workdir)))]
        sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv itself
        import gptlab.harness  # noqa: F401  (registers the model "gptlab")

        cli_evaluate()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a problem the user can fix)."""
    return run_command(PROG, lambda: run(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
