"""The judge cannot be gamed: programs written to fool it score 0 in every spec form, honest ones score 1.

Each adversary below scored 1.0 when the checker ran inside the solution's own process (forged pass marker,
expected answers read from the checker's frame, an ``__eq__`` that is always true, a no-op ``sys.exit``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gopd_lightning.rewards import code as code_rewards
from gopd_lightning.rewards.code import reference_run, score_code
from gopd_lightning.rewards.harness import Opaque, from_plain, to_plain

EVALPLUS_STYLE_TEST = """
import numpy as np

def assertion(out, exp, atol):
    exact_match = out == exp
    if not exact_match and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match

def check(candidate):
    inputs = [[1], [2], [3], [-4]]
    results = [1, 4, 9, 16]
    for i, (inp, exp) in enumerate(zip(inputs, results)):
        assertion(candidate(*inp), exp, 0)
"""
SPECS = {
    "reference": {
        "test": EVALPLUS_STYLE_TEST,
        "entry_point": "square",
        "reference": "def square(x):\n    return x * x\n",
    },
    "functional": {"inputs": [[1], [2], [3], [-4]], "outputs": [1, 4, 9, 16], "fn_name": "square"},
    "stdio": {"inputs": ["1\n", "2\n", "3\n", "-4\n"], "outputs": ["1\n", "4\n", "9\n", "16\n"]},
}
HONEST = {
    "reference": "def square(x):\n    return x * x\n",
    "functional": "def square(x):\n    return x * x\n",
    "stdio": "x = int(input())\nprint(x * x)\n",
}

FORGE_MARKER_FROM_ARGV = """
import os, re, sys
for token in re.findall(r"[0-9a-f]{32}", open(sys.argv[0]).read()):
    print(token, flush=True)
os._exit(0)
"""
FORGE_MARKER_FROM_CONSTANTS = """
import os, re, sys
strings, frame = [], sys._getframe()
while frame is not None:
    strings += [c for c in frame.f_code.co_consts if isinstance(c, str)]
    frame = frame.f_back
for value in vars(sys.modules["__main__"]).values():
    strings += [c for c in getattr(getattr(value, "__code__", None), "co_consts", ()) if isinstance(c, str)]
for text in strings:
    if re.fullmatch(r"[0-9a-f]{32}", text.strip()):
        print(text.strip(), flush=True)
os._exit(0)
"""
EXPECTED_FROM_FRAMES = """
import sys

def peek():
    frame = sys._getframe(1)
    while frame is not None:
        for name in ("exp", "expected", "results", "outputs"):
            if name in frame.f_locals:
                value = frame.f_locals[name]
                return value
        frame = frame.f_back

def square(x):
    return peek()
"""
EXPECTED_FROM_FRAMES_STDIO = EXPECTED_FROM_FRAMES + "print(peek())\n"
ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False

def square(x):
    return Anything()
"""
ALWAYS_EQUAL_INT = """
class Sneaky(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__

def square(x):
    return Sneaky(0)
"""
NO_OP_EXIT = """
import sys
sys.exit = lambda *args: None
def square(x):
    return -1
"""
FORGED_REPORTS = """
import os
case = b'{"case": %d, "value": 0, "exit": 0, "stdout": "0"}\\n'
reports = b'{"ready": true}\\n' + b"".join(case % i for i in range(4))
for fd in range(1, 12):
    try:
        os.write(fd, reports + b'{"passed": true}\\n')
    except OSError:
        pass
os._exit(0)
"""
ADVERSARIES = {
    "marker from argv": FORGE_MARKER_FROM_ARGV,
    "marker from code constants": FORGE_MARKER_FROM_CONSTANTS,
    "expected from the checker's frame": EXPECTED_FROM_FRAMES,
    "expected from the harness' frame (stdio)": EXPECTED_FROM_FRAMES_STDIO,
    "__eq__ always true": ALWAYS_EQUAL,
    "int subclass equal to anything": ALWAYS_EQUAL_INT,
    "sys.exit a no-op": NO_OP_EXIT,
    "forged harness reports": FORGED_REPORTS,
}


pytestmark = pytest.mark.usefixtures("usable_sandbox")


@pytest.fixture(autouse=True)
def fresh_reference_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test records reference runs into its own cache (a fresh machine)."""
    monkeypatch.setenv(code_rewards.CACHE_ENV, str(tmp_path / "cache"))
    code_rewards._cached_reference_run.cache_clear()
    yield tmp_path / "cache"
    code_rewards._cached_reference_run.cache_clear()


def score(code: str, spec: dict) -> float:
    return score_code(f"```python\n{code}\n```", json.dumps(spec))


@pytest.mark.parametrize("form", sorted(SPECS))
def test_honest_solutions_pass(form: str) -> None:
    assert score(HONEST[form], SPECS[form]) == 1.0
    assert score(HONEST[form].replace("x * x", "x * abs(x)"), SPECS[form]) == 0.0, "the last case catches it"


@pytest.mark.parametrize("form", sorted(SPECS))
@pytest.mark.parametrize("adversary", sorted(ADVERSARIES))
def test_adversaries_score_zero(adversary: str, form: str) -> None:
    assert score(ADVERSARIES[adversary], SPECS[form]) == 0.0


def test_values_cross_the_sandbox_as_plain_data_only() -> None:
    values = [None, True, 3, -(10**5000), 2.5, float("inf"), "text", b"\x00\xff", 1 + 2j, [1, (2, 3)], {1, 2}]
    values += [frozenset({4}), {"tuple": [1]}, {"a": {"b": [None]}}, {(1, 2): "pair", 3: None}]
    for value in values:
        assert from_plain(json.loads(json.dumps(to_plain(value)))) == value, value
    assert type(from_plain(to_plain((1, 2)))) is tuple and type(from_plain(to_plain({"tuple": [1]}))) is dict

    class Sneaky(int):
        def __eq__(self, other: object) -> bool:
            return True

    assert type(from_plain(to_plain(Sneaky(7)))) is int and from_plain(to_plain(Sneaky(7))) == 7
    stand_in = from_plain(json.loads(json.dumps(to_plain(re.match("a", "a")))))
    assert type(stand_in) is Opaque and stand_in is not None and stand_in != stand_in.type_name


SLOW_REFERENCE_TEST = """
def check(candidate):
    for value in [1, 2, 3]:
        assert candidate(value) == value + 1
"""


def slow_spec(seconds: float) -> dict:
    reference = f"import time\ndef step(x):\n    time.sleep({seconds})\n    return x + 1\n"
    return {"test": SLOW_REFERENCE_TEST, "entry_point": "step", "reference": reference, "timeout_s": 120}


def test_each_call_is_stopped_at_evalplus_limit_from_the_reference_time() -> None:
    """``max(1 s, 4 x the reference's time)`` per call: a loop costs about a second, not the 120 s run limit."""
    spec = slow_spec(0.0)
    started = time.monotonic()
    assert score("def step(x):\n    while True:\n        pass\n", spec) == 0.0
    assert time.monotonic() - started < 4
    slow = slow_spec(0.3)  # each call's limit: max(1, 4 x 0.3) = 1.2 s
    assert score("import time\ndef step(x):\n    time.sleep(0.7)\n    return x + 1\n", slow) == 1.0
    started = time.monotonic()
    assert score("import time\ndef step(x):\n    time.sleep(1.6)\n    return x + 1\n", slow) == 0.0
    assert time.monotonic() - started < 4, "stopped in the first call"


def test_reference_runs_are_measured_once_and_cached(fresh_reference_cache: Path) -> None:
    spec = slow_spec(0.2)
    run = reference_run(spec["test"], spec["reference"], spec["entry_point"])
    assert run.inputs == [[1], [2], [3]] and all(0.2 <= seconds < 1.0 for seconds in run.times_s)
    assert len(list(fresh_reference_cache.iterdir())) == 1
    code_rewards._cached_reference_run.cache_clear()
    started = time.monotonic()
    assert reference_run(spec["test"], spec["reference"], spec["entry_point"]) == run
    assert time.monotonic() - started < 0.1, "read from the disk cache, not measured again"


def test_a_reference_failing_its_own_test_is_a_data_error() -> None:
    broken = {**slow_spec(0.0), "reference": "def step(x):\n    return x\n"}
    with pytest.raises(ValueError, match="fails its own test"):
        score(HONEST["reference"], broken)
