"""Code answers: the model's last code block, run against a JSON test spec inside the sandbox.

``ground_truth`` specs (the contract with the data loaders):

1. script: ``{"test": code, "entry_point": name?}``: the solution, then ``test``, then ``check(entry_point)``;
   passes when the program runs to its end and exits 0.
2. stdin/stdout: ``{"inputs": [stdin, ...], "outputs": [stdout, ...]}``: an output matches when its
   whitespace-separated tokens do (so trailing whitespace and empty lines never matter), tokens that are not both
   integers being allowed to differ as numbers by 1e-6 (absolute or relative).
3. functional: ``{"inputs": [[arg, ...], ...], "outputs": [value, ...], "fn_name": name}``: ``Solution().name``
   (or the top-level ``name``) on each argument list equals the value, tuples counting as lists and floats
   within 1e-6.

Any form may set ``"timeout_s"``: the wall time of the run (per case for forms 2 and 3, whose total is capped
at ``MAX_CASES_WALL_S``). Forms 2 and 3 run every case in one sandboxed harness that stops at the first failure;
stdin cases each run in a forked child, so the solution gets real file descriptors 0 and 1.

Every program ends by printing a random marker: a solution that calls ``sys.exit(0)`` before the tests ran
exits 0 without it and fails.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import queue
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gopd_lightning.rewards.math import strip_thinking
from gopd_lightning.rewards.sandbox import SandboxLimits, SandboxResult, check_sandbox, run_python

FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
PYTHON_TAGS = {"", "python", "py", "python3"}
MAX_CASES_WALL_S = 60.0
TOLERANCE = 1e-6


def extract_code(response: str) -> str | None:
    """The last fenced block tagged python, py or nothing, after the last ``</think>``; None when there is none."""
    blocks = [body for tag, body in FENCE.findall(strip_thinking(response)) if tag.strip().lower() in PYTHON_TAGS]
    return blocks[-1] if blocks else None


def score_code(response: str, ground_truth: str, limits: SandboxLimits | None = None, slot: int = 0) -> float:
    """1.0 when the response's code passes every test of ``ground_truth``, else 0.0.

    Never raises on model output; a malformed spec (a data bug) raises ValueError. ``slot`` is the sandbox slot.
    """
    spec = _parse_spec(ground_truth)
    code = extract_code(response)
    if code is None:
        return 0.0
    limits = limits or SandboxLimits()
    marker = secrets.token_hex(16)
    result = run_python(_program(spec, code, marker), limits=_task_limits(spec, limits), slot=slot)
    return float(_ran_to_the_end(result, marker))


def score_code_batch(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    max_workers: int | None = None,
    limits: SandboxLimits | None = None,
) -> list[float]:
    """:func:`score_code` of each pair, in order, ``max_workers`` (default: CPU count) sandboxes at a time.

    Each run in flight holds its own slot (0 .. max_workers - 1): batches scored concurrently on one host
    share those uids, which only merges their process limits.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    check_sandbox()  # probe the host once, before the threads race to
    workers = max(1, min(max_workers or os.cpu_count() or 1, len(responses)))
    free_slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(workers):
        free_slots.put(slot)

    def score_in_free_slot(response: str, ground_truth: str) -> float:
        slot = free_slots.get()
        try:
            return score_code(response, ground_truth, limits, slot)
        finally:
            free_slots.put(slot)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(score_in_free_slot, responses, ground_truths))


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


def _task_limits(spec: dict[str, Any], limits: SandboxLimits) -> SandboxLimits:
    """Wall time from the spec (scaled by the cases of forms 2 and 3, capped); CPU time at least as much."""
    per_run = float(spec.get("timeout_s", limits.wall_time_s))
    wall_time_s = min(per_run * len(spec.get("inputs", [None])), max(per_run, MAX_CASES_WALL_S))
    return dataclasses.replace(limits, wall_time_s=wall_time_s, cpu_time_s=max(limits.cpu_time_s, math.ceil(per_run)))


def _program(spec: dict[str, Any], code: str, marker: str) -> str:
    """The program that runs ``code`` against ``spec`` and prints ``marker`` last when every test passed."""
    end = f"print({chr(10) + marker!r})\n"
    if "test" in spec:
        check = f"check({spec['entry_point']})\n" if spec.get("entry_point") else ""
        return f"{code}\n{spec['test']}\n{check}{end}"
    judge = _judge_functional if "fn_name" in spec else _judge_stdio
    return f"{_harness_source()}\n{judge.__name__}({code!r}, json.loads({json.dumps(spec)!r}))\n{end}"


def _ran_to_the_end(result: SandboxResult, marker: str) -> bool:
    return result.returncode == 0 and result.stdout.rstrip("\n").rsplit("\n", 1)[-1] == marker


# ----- shipped into the sandbox: the harness of forms 2 and 3 (stdlib only; json, math, os, sys imported)


def _close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_value(actual: Any, expected: Any) -> bool:
    """Equality of a function's result, tuples counting as lists and floats within ``TOLERANCE``."""
    actual = list(actual) if isinstance(actual, tuple) else actual
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_same_value, actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(_same_value(actual[key], expected[key]) for key in actual)
    if isinstance(actual, float) or isinstance(expected, float):
        return _is_number(actual) and _is_number(expected) and _close(actual, expected)
    return actual == expected


def _same_token(actual: str, expected: str) -> bool:
    """Equal tokens, or numbers within ``TOLERANCE`` unless both are integers (those must match exactly)."""
    if actual == expected:
        return True
    if actual.lstrip("+-").isdigit() and expected.lstrip("+-").isdigit():
        return int(actual) == int(expected)
    try:
        return _close(float(actual), float(expected))
    except ValueError:
        return False


def _same_stdout(actual: str, expected: str) -> bool:
    """Same whitespace-separated tokens (see _same_token): like checkers of judges, spacing never matters."""
    tokens, expected_tokens = actual.split(), expected.split()
    return len(tokens) == len(expected_tokens) and all(map(_same_token, tokens, expected_tokens))


def _judge_stdio(solution: str, spec: dict[str, Any]) -> None:
    """Run ``solution`` on each stdin in a forked child; exit 1 at the first failure, return when all pass."""
    compiled = compile(solution, "solution.py", "exec")
    for stdin_text, expected in zip(spec["inputs"], spec["outputs"], strict=True):
        with open(os.memfd_create("stdin"), "w+b") as stdin_file:
            stdin_file.write(stdin_text.encode())
            stdin_file.seek(0)
            read_end, write_end = os.pipe()
            child = os.fork()
            if child == 0:
                os.dup2(stdin_file.fileno(), 0)
                os.dup2(write_end, 1)
                os.close(read_end)
                os.close(write_end)
                exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
                raise SystemExit(0)  # through the harness frames: the interpreter exits as after a script
        os.close(write_end)
        with open(read_end, "rb") as pipe:
            output = pipe.read().decode(errors="replace")
        if os.waitpid(child, 0)[1] != 0 or not _same_stdout(output, expected):
            sys.exit(1)


def _judge_functional(solution: str, spec: dict[str, Any]) -> None:
    """Call ``Solution().fn_name`` (or the function ``fn_name``) on each case; exit 1 at the first wrong value."""
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    exec(compile(solution, "solution.py", "exec"), namespace)
    name, solution_class = spec["fn_name"], namespace.get("Solution")
    for args, expected in zip(spec["inputs"], spec["outputs"], strict=True):
        has_method = isinstance(solution_class, type) and hasattr(solution_class, name)
        function = getattr(solution_class(), name) if has_method else namespace[name]
        if not _same_value(function(*args), expected):
            sys.exit(1)


SHIPPED: tuple[Callable[..., Any], ...] = (
    _close,
    _is_number,
    _same_value,
    _same_token,
    _same_stdout,
    _judge_stdio,
    _judge_functional,
)


@functools.cache
def _harness_source() -> str:
    """The shipped functions' source, ready to run on its own."""
    header = f"from __future__ import annotations\nimport json, math, os, sys\nTOLERANCE = {TOLERANCE!r}\n"
    return header + "\n\n".join(inspect.getsource(function) for function in SHIPPED)
