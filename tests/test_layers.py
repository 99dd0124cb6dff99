"""Imports run one way: model <- checkpoints <- tasks / data <- callbacks <- cli.

Every ``import gptlab...`` in every module counts, lazy imports inside functions included, so a
lower layer never learns a higher one's names and no import circle can form between layers.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gptlab"

#: A unit may import units of a strictly lower rank only; units of one rank stay apart.
RANKS = {
    "errors": 0, "fileio": 0, "runs": 0,
    "named_models": 1, "gguf_file": 1, "loggers": 1,
    "tokenizer": 2, "extras": 2,
    "prompts": 3, "model": 3, "sweeps": 3,
    "generate": 4, "checkpoints": 4,
    "data": 5, "tasks": 5, "evaluation": 5, "strategies": 5, "inference": 5, "inspect": 5,
    "callbacks": 6, "serve": 6, "harness": 6,
    "cli": 7,
}


#: ``from gptlab.X ...`` or ``import gptlab.X ...`` at any indentation (lazy imports included).
IMPORT = re.compile(r"^\s*(?:from|import)\s+gptlab\.(\w+)", re.MULTILINE)


def imports_by_unit() -> dict[str, set[tuple[str, str]]]:
    """For each top-level unit of the package, the (module file, imported unit) pairs it holds.

    Read from the source text rather than ``ast``: CPython 3.11's parser state is shared between
    threads, and a test suite with live server threads can trip it.
    """
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = path.relative_to(PACKAGE).with_suffix("").parts[0]
        if unit == "__init__":  # the public API re-exports from every layer
            continue
        for target in IMPORT.findall(path.read_text()):
            if target != unit:
                found.setdefault(unit, set()).add((str(path.relative_to(PACKAGE)), target))
    return found


def test_every_unit_has_a_rank() -> None:
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert units - {"conf"} == set(RANKS)


def test_imports_only_go_down() -> None:
    upward = sorted(f"{module} imports gptlab.{target}"
                    for unit, pairs in imports_by_unit().items()
                    for module, target in pairs if RANKS[target] >= RANKS[unit])
    assert not upward, "\n".join(upward)


def test_the_model_knows_nothing_of_checkpoints_or_tasks() -> None:
    model_imports = {target for _, target in imports_by_unit().get("model", set())}
    assert model_imports <= {"errors"}
