"""Task families of the offline toy world: deterministic prompts with checkable answers.

Each family belongs to a domain (the domain names the teacher that scores it) and yields rows in
the project's schema: ``id``, ``domain``, ``prompt`` (chat messages), ``ground_truth``. The split
is a property of the problem itself, so train and validation problems never overlap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "val"]
Row = dict[str, object]


@dataclass(frozen=True)
class Problem:
    """One toy problem: the user's question, the gold answer, and the gold response text."""

    question: str
    answer: str
    solution: str


def _addition(rng: random.Random) -> Problem:
    a, b = rng.randrange(100), rng.randrange(100)
    total = str(a + b)
    return Problem(f"What is {a}+{b}?", total, f"{a}+{b}={total}. \\boxed{{{total}}}")


@dataclass(frozen=True)
class TaskFamily:
    """A generator of problems for one domain."""

    domain: str
    sample: Callable[[random.Random], Problem]


TASK_FAMILIES: dict[str, TaskFamily] = {"math": TaskFamily("math", _addition)}


def in_split(problem: Problem, split: Split) -> bool:
    """Every seventh problem (by a stable hash of its question) is held out for validation."""
    held_out = sum(ord(c) * (i + 1) for i, c in enumerate(problem.question)) % 7 == 0
    return held_out == (split == "val")


def problems(family: str, n: int, seed: int, split: Split) -> list[Problem]:
    """``n`` problems of ``family`` in ``split``, the same for the same seed."""
    if family not in TASK_FAMILIES:
        raise KeyError(f"unknown toy task family {family!r}; known: {sorted(TASK_FAMILIES)}")
    rng = random.Random(f"{family}/{split}/{seed}")
    found: list[Problem] = []
    while len(found) < n:
        problem = TASK_FAMILIES[family].sample(rng)
        if in_split(problem, split):
            found.append(problem)
    return found


def toy_rows(family: str, n: int, seed: int = 0, split: Split = "train") -> list[Row]:
    """``n`` rows of the toy ``family`` in the project's row schema."""
    domain = TASK_FAMILIES.get(family, TaskFamily(family, _addition)).domain
    return [
        {
            "id": f"toy-{family}-{split}-{seed}-{index}",
            "domain": domain,
            "prompt": [{"role": "user", "content": p.question}],
            "ground_truth": p.answer,
        }
        for index, p in enumerate(problems(family, n, seed, split))
    ]
