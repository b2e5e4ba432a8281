"""The one row schema every source is turned into.

A row is a dict with ``id`` (str), ``domain`` (str: names the teacher that scores it),
``prompt`` (a list of chat messages ``{"role", "content"}``) and ``ground_truth`` (str: the answer
for math, a JSON test spec for code; may be empty when nothing can be checked).
"""

from __future__ import annotations

from collections.abc import Mapping

Row = dict[str, object]
FIELDS = ("id", "domain", "prompt", "ground_truth")


def validate_row(row: Mapping, where: str) -> Row:
    """Return ``row`` in schema form, or raise a ValueError that names ``where`` and the problem."""
    missing = [name for name in FIELDS if name not in row]
    if missing:
        raise ValueError(f"{where}: malformed row, missing field(s) {missing} (has {sorted(row)})")
    prompt = row["prompt"]
    if (
        not isinstance(prompt, list)
        or not prompt
        or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
    ):
        raise ValueError(f"{where}: malformed row, 'prompt' must be a non-empty list of {{role, content}} messages")
    if not isinstance(row["domain"], str) or not row["domain"]:
        raise ValueError(f"{where}: malformed row, 'domain' must be a non-empty string")
    ground_truth = row["ground_truth"]
    if ground_truth is not None and not isinstance(ground_truth, str):
        raise ValueError(f"{where}: malformed row, 'ground_truth' must be a string, got {type(ground_truth).__name__}")
    return {
        "id": str(row["id"]),
        "domain": row["domain"],
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "ground_truth": ground_truth or "",
    }
