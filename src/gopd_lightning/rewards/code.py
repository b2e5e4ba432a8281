"""Code answers: the model's last code block, run in the sandbox and judged by code it cannot reach.

The solution runs in the sandbox under :mod:`~gopd_lightning.rewards.harness`, which reports each test's result
as plain data; the verdict is reached here, or (benchmarks whose checks are code) in a second sandbox run of the
benchmark's own test that never contains the solution. Expected outputs never enter the solution's sandbox.

``ground_truth`` specs (the contract with the data loaders):

1. functional: ``{"inputs": [[arg, ...], ...], "outputs": [value, ...], "fn_name": name}``: graded as
   LiveCodeBench's ``lcb_runner`` does: ``name`` of one ``Solution()`` (when the code has ``class Solution``, else
   the top-level ``name``) on each argument list, a tuple result counting as a list, equal with ``==``;
2. stdin/stdout: ``{"inputs": [stdin, ...], "outputs": [stdout, ...]}``: ``lcb_runner``'s comparison: the same
   number of stripped lines, each equal as text or, failing that, as a list of ``Decimal`` tokens; a SystemExit
   ends the run normally, an exception fails it. Unlike ``lcb_runner``, the code runs as ``__main__`` on real
   file descriptors rather than wrapped in a function over a mocked stdin.

Forms 1 and 2 run after ``lcb_runner``'s imports (``LCB_PRELUDE``).
3. reference (EvalPlus): ``{"test": code, "entry_point": name, "reference": code}``: ``test`` is the benchmark's
   check. Once per problem (cached on disk) the check runs on the reference solution, recording each call's
   arguments and wall time. The candidate then runs on those arguments, each call stopped at EvalPlus' limit
   ``max(1 s, 4 x the reference's time)``, and the check re-runs on the candidate's recorded outputs;
4. script: ``{"test": code, "entry_point": name?}``: the solution, then ``test``, then ``check(entry_point)`` in
   one program that must print a random marker last. WEAKER: the solution shares the process with its check
   and can defeat it; only for datasets with nothing but assert-style tests.

``"timeout_s"``: per case for forms 1 and 2 (default 1 s), the whole run for form 4, and the reference's own runs
for form 3. Each form stops at the first failing case.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gopd_lightning.rewards import harness
from gopd_lightning.rewards.harness import from_plain, to_plain
from gopd_lightning.rewards.math import strip_thinking
from gopd_lightning.rewards.sandbox import SandboxLimits, SandboxResult, check_sandbox, run_python

FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
PYTHON_TAGS = {"", "python", "py", "python3"}
DEFAULT_CASE_S = 1.0
STARTUP_S = 5.0  # interpreter start and the solution's module code, before the first case
MIN_CASE_S, REFERENCE_TIME_FACTOR = 1.0, 4.0  # EvalPlus' per-test limit
REFERENCE_TIMEOUT_S = 120.0
MAX_EVENT_BYTES, MAX_REPORT_BYTES = (64 << 20) + 4096, 512 << 20  # see harness.MAX_VALUE_BYTES
TRANSFER_GRACE_S = 0.5
READY = b'{"ready": true}'
CACHE_ENV = "GOPD_CACHE_DIR"
# lcb_runner runs every solution after these imports (so `List`, `deque`, `gcd` need none) and a deep stack
LCB_STAR_IMPORTS = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random")
LCB_STAR_IMPORTS += ("statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
LCB_PRELUDE = (
    "".join(f"from {module} import *\n" for module in LCB_STAR_IMPORTS)
    + "".join(f"import {module}\n" for module in LCB_STAR_IMPORTS[:-2])
    + "sys.setrecursionlimit(50000)\n"
)


def extract_code(response: str) -> str | None:
    """The last fenced block tagged python, py or nothing, after the last ``</think>``; None when there is none."""
    blocks = [body for tag, body in FENCE.findall(strip_thinking(response)) if tag.strip().lower() in PYTHON_TAGS]
    return blocks[-1] if blocks else None


def score_code(response: str, ground_truth: str, limits: SandboxLimits | None = None) -> float:
    """1.0 when the response's code passes every test of ``ground_truth``, else 0.0.

    Never raises on model output; a malformed spec or a reference solution that fails its own test (data bugs)
    raise ValueError.
    """
    spec = _parse_spec(ground_truth)
    code = extract_code(response)
    if code is None:
        return 0.0
    limits = limits or SandboxLimits()
    if "reference" in spec:
        return float(_passes_reference_check(code, spec, limits))
    if "test" in spec:
        return float(_passes_script(code, spec, limits))
    return float(_passes_cases(code, spec, limits))


def score_code_batch(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    max_workers: int | None = None,
    limits: SandboxLimits | None = None,
) -> list[float]:
    """:func:`score_code` of each pair, in order, ``max_workers`` (default: CPU count) sandboxes at a time."""
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    check_sandbox()  # probe the host once, before the threads race to
    workers = max(1, min(max_workers or os.cpu_count() or 1, len(responses)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda pair: score_code(*pair, limits), zip(responses, ground_truths, strict=True)))


# ------------------------------------------------------------------------------------------------ specs


def _parse_spec(ground_truth: str) -> dict[str, Any]:
    """The validated spec; ValueError says what is wrong with it."""
    try:
        spec = json.loads(ground_truth)
    except json.JSONDecodeError as error:
        raise ValueError(f"code ground truth is not JSON ({error}): {ground_truth[:200]!r}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"code ground truth must be a JSON object, got {ground_truth[:200]!r}")
    timeout_s = spec.get("timeout_s", 1)
    _require(_is_number(timeout_s) and timeout_s > 0, "'timeout_s' must be a positive number", spec)
    if "test" in spec:
        _require(isinstance(spec["test"], str), "'test' must be a string", spec)
        _require(isinstance(spec.get("entry_point", ""), str), "'entry_point' must be a string", spec)
        if "reference" in spec:
            _require(isinstance(spec["reference"], str), "'reference' must be a string", spec)
            _require(bool(spec.get("entry_point")), "a 'reference' spec needs its 'entry_point'", spec)
        return spec
    _require("inputs" in spec and "outputs" in spec, "needs 'test', or 'inputs' and 'outputs'", spec)
    inputs, outputs = spec["inputs"], spec["outputs"]
    _require(isinstance(inputs, list) and isinstance(outputs, list), "'inputs' and 'outputs' must be lists", spec)
    _require(len(inputs) == len(outputs) > 0, "'inputs' and 'outputs' must be equally long, not empty", spec)
    if "fn_name" in spec:
        _require(isinstance(spec["fn_name"], str), "'fn_name' must be a string", spec)
        _require(all(isinstance(args, list) for args in inputs), "functional inputs must be argument lists", spec)
    else:
        _require(all(isinstance(text, str) for text in inputs + outputs), "stdin/stdout cases must be strings", spec)
    return spec


def _require(condition: bool, problem: str, spec: dict[str, Any]) -> None:
    if not condition:
        raise ValueError(f"bad code test spec: {problem}; keys: {sorted(spec)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------- the judge outside the sandbox


class CaseJudge:
    """Follows the harness' reports of one run (a sandbox :class:`~.sandbox.Watcher`).

    Each case must be reported, in order, before its own deadline (counted from the previous report, extended
    while a report's bytes are still arriving) and be accepted by ``accept(case, report)``; anything else (a
    malformed or oversized line, a wrong or late answer) fails the run and stops it at once.
    """

    def __init__(self, case_limits_s: Sequence[float], accept: Callable[[int, bytes], bool]) -> None:
        self.case_limits_s, self.accept = list(case_limits_s), accept
        self.next_case, self.ready, self.failed = 0, False, False
        self._deadline = time.monotonic() + STARTUP_S
        self._pending: list[bytes] = []
        self._pending_bytes = self._received = 0

    @property
    def passed(self) -> bool:
        return not self.failed and self.next_case == len(self.case_limits_s)

    def deadline(self) -> float:
        return self._deadline

    def feed(self, data: bytes) -> bool:
        self._received += len(data)
        self._pending_bytes += len(data)
        if b"\n" in data:
            *lines, tail = b"".join([*self._pending, data]).split(b"\n")
            self._pending, self._pending_bytes = [tail], len(tail)
        else:
            lines = []
            self._pending.append(data)
        if self._pending_bytes > MAX_EVENT_BYTES or self._received > MAX_REPORT_BYTES:
            self.failed = True
        if self._pending_bytes:  # a long report on its way: its transfer does not count against the case
            self._deadline = max(self._deadline, time.monotonic() + TRANSFER_GRACE_S)
        for line in lines:
            if self.failed or self.passed:
                break
            try:
                self.failed = not self._take(line)
            except Exception:  # noqa: BLE001 - whatever the line holds, it is a failed run, never a crash here
                self.failed = True
        return not self.failed

    def _take(self, line: bytes) -> bool:
        if not self.ready:
            self.ready = line == READY
            if not self.ready:
                return False
        elif self.accept(self.next_case, line):
            self.next_case += 1
        else:
            return False
        if self.next_case < len(self.case_limits_s):
            self._deadline = time.monotonic() + self.case_limits_s[self.next_case]
        return True


def _run_judged(
    payload: dict[str, Any],
    case_limits_s: Sequence[float],
    accept: Callable[[int, bytes], bool],
    limits: SandboxLimits,
) -> bool:
    """Run the harness on ``payload`` under a :class:`CaseJudge`; whether every case was reported and accepted."""
    judge = CaseJudge(case_limits_s, accept)
    wall_time_s = STARTUP_S + sum(case_limits_s) + 1.0
    run_limits = dataclasses.replace(limits, wall_time_s=wall_time_s, cpu_time_s=math.ceil(wall_time_s))
    run_python(harness.harness_source(), stdin=json.dumps(payload), limits=run_limits, watcher=judge)
    return judge.passed


def _passes_cases(code: str, spec: dict[str, Any], limits: SandboxLimits) -> bool:
    """Forms 1 and 2: each case's value (or stdout) compared here with the expected one, as ``lcb_runner`` does."""
    expected = spec["outputs"]
    if "fn_name" in spec:
        inputs = [to_plain(arguments) for arguments in spec["inputs"]]
        payload = {"mode": "calls", "solution": code, "entry": spec["fn_name"], "methods": True, "inputs": inputs}
        payload["prelude"] = LCB_PRELUDE

        def accept(case: int, line: bytes) -> bool:
            report = _case_report(case, line)
            return "value" in report and same_value(from_plain(report["value"]), expected[case])

    else:
        payload = {"mode": "stdio", "solution": code, "inputs": spec["inputs"], "prelude": LCB_PRELUDE}

        def accept(case: int, line: bytes) -> bool:
            report = _case_report(case, line)
            return report.get("exit") == 0 and same_stdout(report.get("stdout"), expected[case])

    per_case = float(spec.get("timeout_s", DEFAULT_CASE_S))
    return _run_judged(payload, [per_case] * len(expected), accept, limits)


def _case_report(case: int, line: bytes) -> dict[str, Any]:
    """The harness' report of ``case`` (an empty dict when the line is anything else)."""
    report = json.loads(line)
    return report if isinstance(report, dict) and report.get("case") == case else {}


def same_value(prediction: Any, expected: Any) -> bool:
    """``lcb_runner``'s call-based check: a tuple counts as a list, then ``==``."""
    return (list(prediction) if isinstance(prediction, tuple) else prediction) == expected


def same_stdout(prediction: Any, expected: str) -> bool:
    """``lcb_runner``'s stdio check: as many stripped lines, each equal as text or as a list of Decimals."""
    if not isinstance(prediction, str):
        return False
    lines, expected_lines = _stripped_lines(prediction), _stripped_lines(expected)
    return len(lines) == len(expected_lines) and all(map(_same_line, lines, expected_lines))


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _same_line(line: str, expected: str) -> bool:
    if line == expected:
        return True
    try:
        return [Decimal(token) for token in line.split()] == [Decimal(token) for token in expected.split()]
    except (InvalidOperation, ValueError):
        return False


# ------------------------------------------------------------------------------ form 3: reference checks


@dataclasses.dataclass(frozen=True)
class ReferenceRun:
    """The calls a benchmark's check makes to the reference solution: arguments (plain data), wall times, and the
    digests of the reference's values."""

    inputs: list[Any]
    times_s: list[float]
    digests: list[str]


def _passes_reference_check(code: str, spec: dict[str, Any], limits: SandboxLimits) -> bool:
    """Form 3: the candidate on the recorded arguments (timed per call), then the check on its outputs.

    A candidate whose every value is the reference's own (same digest) passes without re-running the check; a
    value over ``harness.MAX_VALUE_BYTES`` is reported by digest alone and must be the reference's.
    """
    reference = reference_run(spec["test"], spec["reference"], spec["entry_point"], spec.get("timeout_s"))
    case_limits_s = [max(MIN_CASE_S, REFERENCE_TIME_FACTOR * seconds) for seconds in reference.times_s]
    values: list[bytes | None] = []  # None: reported by digest only
    digests: list[str] = []

    def accept(case: int, line: bytes) -> bool:
        prefix = b'{"case": %d, "value": ' % case
        if line.startswith(prefix) and line.endswith(b"}"):
            values.append(line[len(prefix) : -1])
            digests.append(harness.digest(values[-1]))
            return True
        report = _case_report(case, line)  # a huge value's digest, or an error: EvalPlus fails on an exception
        values.append(None)
        digests.append(report.get("digest"))
        return isinstance(digests[-1], str)

    payload = {"mode": "calls", "solution": code, "entry": spec["entry_point"], "inputs": reference.inputs}
    if not _run_judged(payload, case_limits_s, accept, limits):
        return False
    if digests == reference.digests:
        return True
    if None in values:
        return False  # a huge value unlike the reference's: judged by equality alone
    try:
        outputs = [json.loads(value) for value in values]
    except (ValueError, RecursionError):
        return False  # a forged report
    replay = {"mode": "replay", "test": spec["test"], "reference": spec["reference"], "entry": spec["entry_point"]}
    verdict = _trusted_run({**replay, "inputs": reference.inputs, "outputs": outputs}, spec.get("timeout_s"))
    return verdict.get("passed") is True


def reference_run(test: str, reference: str, entry_point: str, timeout_s: float | None = None) -> ReferenceRun:
    """The recorded calls of ``test`` on ``reference``, measured once and cached on disk (``GOPD_CACHE_DIR``).

    Raises ValueError when the reference fails its own test: the problem is broken, not the candidate.
    """
    text = json.dumps([_harness_digest(), test, reference, entry_point])
    return _cached_reference_run(hashlib.sha256(text.encode()).hexdigest(), test, reference, entry_point, timeout_s)


@functools.lru_cache(maxsize=4096)
def _cached_reference_run(
    key: str, test: str, reference: str, entry_point: str, timeout_s: float | None
) -> ReferenceRun:
    path = _cache_dir() / f"{key}.json"
    try:
        record = json.loads(path.read_text())
        return ReferenceRun(record["inputs"], record["times_s"], record["digests"])
    except (OSError, ValueError, KeyError):
        pass
    payload = {"mode": "record", "test": test, "reference": reference, "entry": entry_point}
    report = _trusted_run(payload, timeout_s)
    if "inputs" not in report:
        raise ValueError(f"the reference solution of {entry_point!r} fails its own test: {report.get('error')}")
    run = ReferenceRun(report["inputs"], report["times"], report["digests"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(dataclasses.asdict(run), handle)
    os.replace(handle.name, path)  # atomic: concurrent recorders of one problem never see half a file
    return run


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "gopd_lightning")
    return Path(root).expanduser() / "reference_runs"


@functools.cache
def _harness_digest() -> str:
    return hashlib.sha256(harness.harness_source().encode()).hexdigest()[:16]


def _trusted_run(payload: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """Run the harness on benchmark code only (record, replay); its last report, or ``{"error": ...}``."""
    wall_time_s = float(timeout_s or REFERENCE_TIMEOUT_S)
    limits = SandboxLimits(wall_time_s=wall_time_s, cpu_time_s=math.ceil(wall_time_s), output_mb=MAX_REPORT_BYTES >> 20)
    result = run_python(harness.harness_source(), stdin=json.dumps(payload), limits=limits)
    try:
        report = json.loads(result.stdout.rstrip("\n").rsplit("\n", 1)[-1])
    except ValueError:
        report = None
    if not isinstance(report, dict):
        why = "timed out" if result.timed_out else f"exit {result.returncode}: {result.stderr[-500:]}"
        return {"error": why}
    return report


# ---------------------------------------------------------------------------------- form 4: weak scripts


def _passes_script(code: str, spec: dict[str, Any], limits: SandboxLimits) -> bool:
    """Form 4: solution and check in one program, which must run to its end and print the marker last."""
    marker = secrets.token_hex(16)
    check = f"check({spec['entry_point']})\n" if spec.get("entry_point") else ""
    program = f"{code}\n{spec['test']}\n{check}print({chr(10) + marker!r})\n"
    wall_time_s = float(spec.get("timeout_s", limits.wall_time_s))
    cpu_time_s = max(limits.cpu_time_s, math.ceil(wall_time_s))
    run_limits = dataclasses.replace(limits, wall_time_s=wall_time_s, cpu_time_s=cpu_time_s)
    return _ran_to_the_end(run_python(program, limits=run_limits), marker)


def _ran_to_the_end(result: SandboxResult, marker: str) -> bool:
    return result.returncode == 0 and result.stdout.rstrip("\n").rsplit("\n", 1)[-1] == marker
