"""The code that runs inside the sandbox around a solution, and the plain-data codec of what crosses it.

Nothing the solution can reach decides its verdict: this harness only *runs* code and reports what happened,
one JSON line per event on a private copy of stdout (the solution's own prints go to /dev/null), and the judge
outside compares. Values cross as tagged JSON (:func:`to_plain` / :func:`from_plain`), so an object with a
rigged ``__eq__`` cannot: only its plain value does.

Modes (the JSON payload on stdin):

* ``calls``: exec ``solution``, then call ``entry`` (``Solution().entry`` first when ``methods``) on each of
  ``inputs``, reporting ``{"case": i, "value": ...}`` or ``{"case": i, "error": ...}``;
* ``stdio``: run ``solution`` as ``__main__`` on each stdin in a forked child, reporting its exit code and stdout;
* ``record`` (trusted code only): run a benchmark's ``test`` with the reference solution as ``entry``, reporting
  every call's arguments, wall time (its value's serialisation included) and the digest of its value: the
  inputs, time limits and known-good answers of the candidate runs;
* ``replay`` (trusted code only): run ``test`` with an ``entry`` that returns the candidate's recorded outputs
  in call order, reporting whether the test passed.

This file is stdlib only and runs as one script: the sandbox ships its text (see :func:`harness_source`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

TAGS = ("tuple", "list", "set", "frozenset", "dict", "complex", "bytes", "int", "opaque")
BIG_INT_BITS = 8192  # beyond this an int crosses as hex: decimal text of over 4300 digits does not parse
MAX_STDOUT_BYTES = 4 << 20
SCALARS = (int, float, str, bool, type(None))  # exact types: subclasses go through their base type
SLICE_ITEMS = 4096
MAX_VALUE_BYTES = 64 << 20  # a value reported whole; beyond, by digest (Mbpp/255 returns a gigabyte)
TEXT_SCALARS = (float, str, bool, type(None))  # scalars that cross as they are (an int may be too big for JSON)


def to_plain(value: Any) -> Any:
    """``value`` as JSON-able data that :func:`from_plain` turns back into builtins.

    Subclasses of builtins cross as their builtin value (read through the base type, never their overrides);
    numpy values cross as their ``tolist()``; any other object as an :class:`Opaque` stand-in of its type.
    """
    kind = type(value)
    if kind is list:  # exact containers first: outputs can hold millions of them
        return _plain_items(value)
    if kind is tuple:
        return {"tuple": _plain_items(value)}
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        number = int.__index__(value)
        return {"int": hex(number)} if _big(number) else number
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, list):
        return _plain_items(list.__iter__(value))
    if isinstance(value, tuple):
        return {"tuple": _plain_items(tuple.__iter__(value))}
    if isinstance(value, (set, frozenset)):
        kind_name = "frozenset" if isinstance(value, frozenset) else "set"
        return {kind_name: _plain_items((frozenset if kind_name == "frozenset" else set).__iter__(value))}
    if isinstance(value, dict):
        items = list(dict.items(value))
        if all(type(key) is str for key, _ in items) and not (len(items) == 1 and items[0][0] in TAGS):
            return {key: to_plain(item) for key, item in items}
        return {"dict": [[to_plain(key), to_plain(item)] for key, item in items]}
    if isinstance(value, complex):
        return {"complex": [complex.__getattribute__(value, "real"), complex.__getattribute__(value, "imag")]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).decode("latin-1")}
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return to_plain(value.tolist())
    return {"opaque": type(value).__name__}


def _plain_items(items: Any) -> list[Any]:
    """The items of a container as plain data; scalars (the common case) without a call per item."""
    items = list(items)
    if all(type(item) in SCALARS for item in items) and not any(type(item) is int and _big(item) for item in items):
        return items
    return [item if type(item) in TEXT_SCALARS else to_plain(item) for item in items]


class Opaque:
    """What an object that is not plain data (a regex match, a generator, a rigged class) arrives as: only
    itself, equal to nothing else, truthy and not None (as checks like ``out is not None`` need)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name} object>"


def plain_json(value: Any) -> Iterator[str]:
    """``json.dumps(to_plain(value))`` in pieces: a long list a slice at a time, so that a huge output never has a
    second copy (plain data and text) of itself in memory."""
    if type(value) is not list or len(value) <= SLICE_ITEMS:
        yield json.dumps(to_plain(value))
        return
    yield "["
    for start in range(0, len(value), SLICE_ITEMS):
        piece = json.dumps(_plain_items(value[start : start + SLICE_ITEMS]))[1:-1]
        yield piece if start == 0 else ", " + piece
    yield "]"


def _big(number: int) -> bool:
    return number.bit_length() > BIG_INT_BITS


def from_plain(data: Any) -> Any:
    """The builtin value of :func:`to_plain`'s ``data`` (ValueError on anything it cannot have written)."""
    if isinstance(data, list):
        if all(type(item) in SCALARS for item in data):
            return data
        return [from_plain(item) for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        ((tag, body),) = data.items()
        if tag in TAGS:
            return _from_tagged(tag, body)
    return {key: from_plain(item) for key, item in data.items()}


def _from_tagged(tag: str, body: Any) -> Any:
    if tag == "int":
        return int(body, 16)
    if tag == "opaque":
        return Opaque(str(body))
    if tag == "complex":
        return complex(*body)
    if tag == "bytes":
        return body.encode("latin-1")
    if tag == "dict":
        return {from_plain(key): from_plain(item) for key, item in body}
    if not isinstance(body, list):
        raise ValueError(f"bad {tag} body")
    return {"tuple": tuple, "list": list, "set": set, "frozenset": frozenset}[tag](map(from_plain, body))


def _report(channel: Any, **event: Any) -> None:
    channel.write(json.dumps(event) + "\n")
    channel.flush()


def _private_channel() -> Any:
    """The harness' own copy of stdout; fds 0 and 1 then point at /dev/null for whatever runs next."""
    channel = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    return channel


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def _exec_module(source: str, name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name, "__builtins__": __builtins__}
    exec(compile(source, "solution.py", "exec"), namespace)
    return namespace


def _entry_function(namespace: dict[str, Any], solution: str, entry: str, methods: bool) -> Any:
    """``entry`` of the solution; with ``methods``, as ``lcb_runner`` finds it: on one ``Solution()`` when the
    code mentions ``class Solution``, else the module's own function."""
    if methods and "class Solution" in solution:
        return getattr(namespace["Solution"](), entry)
    return namespace[entry]


def serve_calls(channel: Any, payload: dict[str, Any]) -> None:
    """Mode ``calls``: the solution's value (or error) on each input, reported as it comes."""
    try:
        namespace = _exec_module(payload.get("prelude", "") + payload["solution"], "solution")
        function = _entry_function(namespace, payload["solution"], payload["entry"], payload.get("methods", False))
    except BaseException as error:  # noqa: BLE001 - a solution may raise anything, SystemExit included
        return _report(channel, error=_describe(error))
    _report(channel, ready=True)
    for case, arguments in enumerate(payload["inputs"]):
        try:
            value = function(*from_plain(arguments))
        except BaseException as error:  # noqa: BLE001
            _report(channel, case=case, error=_describe(error))
            continue
        _report_value(channel, case, value)


def serve_stdio(channel: Any, payload: dict[str, Any]) -> None:
    """Mode ``stdio``: each stdin through the solution in a forked child, which gets real fds 0 and 1.

    The child exits 0 when the solution ends or raises SystemExit (as ``lcb_runner`` takes it), 1 on an error.
    """
    try:
        compiled = compile(payload.get("prelude", "") + payload["solution"], "solution.py", "exec")
    except BaseException as error:  # noqa: BLE001
        return _report(channel, error=_describe(error))
    _report(channel, ready=True)
    for case, stdin_text in enumerate(payload["inputs"]):
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, stdin_text.encode())
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.dup2(stdin_fd, 0)
            os.dup2(write_end, 1)
            os.closerange(3, 1 << 16)
            _run_as_main(compiled)
        os.close(write_end)
        os.close(stdin_fd)
        with open(read_end, "rb") as pipe:
            output = pipe.read(MAX_STDOUT_BYTES)
        exit_code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        _report(channel, case=case, exit=exit_code, stdout=output.decode(errors="replace"))


def _report_value(channel: Any, case: int, value: Any) -> None:
    """``{"case": i, "value": ...}`` (the layout of :func:`_report`), or ``{"case": i, "digest": ...}`` alone
    when the value's text passes ``MAX_VALUE_BYTES``: such a value is judged by equality with the reference's."""
    hashed, pieces, size = hashlib.sha256(), [], 0
    for piece in plain_json(value):
        hashed.update(piece.encode())
        size += len(piece)
        if size <= MAX_VALUE_BYTES:
            pieces.append(piece)
        elif pieces:
            pieces = []  # too big to report whole: keep hashing only
    if size > MAX_VALUE_BYTES:
        return _report(channel, case=case, digest=hashed.hexdigest())
    channel.write(f'{{"case": {case}, "value": ')
    channel.writelines(pieces)
    channel.write("}\n")
    channel.flush()


def _run_as_main(compiled: Any) -> None:
    """Run a compiled script as ``__main__`` in this (forked) process and exit: 0 at its end or SystemExit."""
    try:
        exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        pass
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        os._exit(1)
    try:
        sys.stdout.flush()
    finally:
        os._exit(0)


def _run_test(payload: dict[str, Any], entry_function: Any) -> None:
    """The benchmark's test with ``entry_function`` as its entry point (``check(entry)`` when it defines one)."""
    namespace = _exec_module(payload.get("reference", ""), "__main__")
    namespace[payload["entry"]] = entry_function
    before = namespace.get("check")
    exec(compile(payload["test"], "test.py", "exec"), namespace)
    if callable(namespace.get("check")) and namespace["check"] is not before:  # the test defines ``check``
        namespace["check"](entry_function)


def record_reference(channel: Any, payload: dict[str, Any]) -> None:
    """Mode ``record``: every call the test makes to the reference solution: arguments, wall time, and the digest
    of the value (a candidate with the reference's very values passes, as under EvalPlus)."""
    reference = _exec_module(payload["reference"], "solution")[payload["entry"]]
    inputs, times, digests = [], [], []

    def recorded(*arguments: Any) -> Any:
        inputs.append(to_plain(list(arguments)))
        started = time.perf_counter()
        try:
            value = reference(*arguments)
            hashed = hashlib.sha256()
            for piece in plain_json(value):  # timed: a candidate's report of the value costs as much
                hashed.update(piece.encode())
            digests.append(hashed.hexdigest())
            return value
        finally:
            times.append(time.perf_counter() - started)

    try:
        _run_test(payload, recorded)
    except BaseException as error:  # noqa: BLE001
        return _report(channel, error=_describe(error))
    _report(channel, inputs=inputs, times=times, digests=digests)


def digest(value_json: bytes) -> str:
    """The digest of a value's JSON text as the harness reports it."""
    return hashlib.sha256(value_json).hexdigest()


def _replay(payload: dict[str, Any], inputs: list[Any], outputs: list[Any]) -> tuple[bool, str]:
    """Whether the test passes on ``outputs`` (plain data) returned in call order, and why not."""
    calls = []

    def replayed(*arguments: Any) -> Any:
        case = len(calls)
        calls.append(case)
        if case >= len(outputs) or json.dumps(to_plain(list(arguments))) != json.dumps(inputs[case]):
            raise AssertionError(f"the test's call {case} differs from the recorded one")
        return from_plain(outputs[case])

    try:
        _run_test(payload, replayed)
    except BaseException as error:  # noqa: BLE001
        return False, _describe(error)
    return len(calls) == len(outputs), f"{len(calls)} calls of {len(outputs)}"


def replay_outputs(channel: Any, payload: dict[str, Any]) -> None:
    """Mode ``replay``: the test run on the candidate's recorded outputs; passes only if it asks for each once."""
    passed, why = _replay(payload, payload["inputs"], payload["outputs"])
    _report(channel, passed=passed, why=why)


MODES = {"calls": serve_calls, "stdio": serve_stdio, "record": record_reference, "replay": replay_outputs}


def main() -> None:
    """Read the payload from stdin, then serve its mode."""
    payload = json.loads(sys.stdin.read())
    channel = _private_channel()
    MODES[payload["mode"]](channel, payload)
    channel.flush()
    os._exit(0)  # no atexit hooks of the solution


@functools.cache
def harness_source() -> str:
    """This file's text: the program the sandbox runs (as ``__main__``, so it calls :func:`main`)."""
    with open(__file__, encoding="utf-8") as handle:
        return handle.read()


if __name__ == "__main__":
    main()
