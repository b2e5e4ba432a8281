"""The worker interpreter of :mod:`gopd_lightning.rewards.pool`: runs named functions, one JSON line at a time.

Reads ``{"target": "module:name", "args": [...]}`` lines and answers ``{"result": ...}`` or
``{"error": "..."}``. What the functions print goes to stderr, so it cannot break the protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any


def resolve(target: str) -> Any:
    """The object ``module:qualified.name`` names."""
    module, _, name = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def serve() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        try:
            task = json.loads(line)
            reply = {"result": resolve(task["target"])(*task["args"])}
            json.dumps(reply)
        except Exception as error:  # the caller scores a failed check as wrong
            reply = {"error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
