"""Responses of several models to the same test records, side by side, as one markdown table.

Each argument is ``LABEL=PATH`` of a JSONL file written by ``gptlab-respond`` on the same split;
rows are matched by record index, and the first ``--records`` records are printed.

    python experiments/instruct/side_by_side.py before=runs/untuned/test.jsonl lora=runs/lora/test.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cell(text: str, limit: int) -> str:
    """One table cell: a single line, pipes escaped, cut to ``limit`` characters."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="LABEL=responses.jsonl")
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--width", type=int, default=160, help="characters per response cell")
    args = parser.parse_args()
    columns: dict[str, dict[int, dict]] = {}
    for spec in args.files:
        label, _, path = spec.partition("=")
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        columns[label] = {row["index"]: row for row in rows}
    first = next(iter(columns.values()))
    print("| instruction | reference | " + " | ".join(columns) + " |")
    print("|---" * (2 + len(columns)) + "|")
    for index in sorted(first)[: args.records]:
        record = first[index]
        task = record["instruction"] + (f" ({record['input']})" if record.get("input") else "")
        answers = [cell(col[index]["model_response"], args.width) if index in col else "–" for col in columns.values()]
        print(f"| {cell(task, 100)} | {cell(record['output'], 80)} | " + " | ".join(answers) + " |")


if __name__ == "__main__":
    main()
