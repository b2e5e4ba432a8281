"""Task families of the offline toy world: deterministic prompts with checkable answers.

Each family belongs to a domain (the domain names the teacher that scores it) and yields rows in
the project's schema: ``id``, ``domain``, ``prompt`` (chat messages), ``ground_truth``. The split
is a property of the problem itself, so train and validation problems never overlap.

- ``math``: two-digit addition, "What is 23+45?" -> ``23+45=68. \\boxed{68}``.
- ``code``: a linear function from two of its values, "Write Python f(x) with f(0)=47, f(1)=50."
  -> a fenced ``def f(x): return 3*x+47``; the ground truth is a functional test spec on more
  inputs than the prompt shows, run by the real sandboxed code scorer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gopd_lightning.data.schema import functional_spec

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


CODE_TEST_INPUTS = (0, 1, 2, 5, -3)
"""Arguments the code answers are tested on: more than the two values the prompt gives."""


def _linear_function(rng: random.Random) -> Problem:
    slope, intercept = rng.randrange(1, 10), rng.randrange(200)
    outputs = [slope * x + intercept for x in CODE_TEST_INPUTS]
    question = f"Write Python f(x) with f(0)={intercept}, f(1)={slope + intercept}."
    solution = f"```python\ndef f(x): return {slope}*x+{intercept}\n```"
    return Problem(question, functional_spec([[x] for x in CODE_TEST_INPUTS], outputs, "f"), solution)


@dataclass(frozen=True)
class TaskFamily:
    """A generator of problems for one domain."""

    domain: str
    sample: Callable[[random.Random], Problem]


TASK_FAMILIES: dict[str, TaskFamily] = {
    "math": TaskFamily("math", _addition),
    "code": TaskFamily("code", _linear_function),
}


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
