"""The one row schema every source is turned into, and the code test-spec contract.

A row is a dict with ``id`` (str), ``domain`` (str: names the teacher that scores it),
``prompt`` (a list of chat messages ``{"role", "content"}``), ``ground_truth`` (str: the answer
for math, a JSON test spec for code; may be empty when nothing can be checked) and, optionally,
``source`` (str: the benchmark or source the row came from, for per-benchmark metrics).

A code test spec is a JSON object in one of these forms (``rewards.code`` says how each is judged):

- reference: ``{"test": str, "entry_point": str, "reference": str, "timeout_s": number (optional)}``:
  a benchmark's check and its reference solution (EvalPlus); the check never shares a process with
  the candidate;
- script: ``{"test": str, "entry_point": str (optional), "timeout_s": number (optional)}``; the
  program is ``solution + "\\n" + test``, plus ``"\\ncheck(<entry_point>)"`` when there is an entry point
  (weaker: for datasets with only assert-style tests);
- stdio: ``{"inputs": [str, ...], "outputs": [str, ...], "timeout_s": number (optional)}``: each input
  is fed on stdin and the program must print the matching output;
- functional: ``{"inputs": [[arg, ...], ...], "outputs": [value, ...], "fn_name": str, "timeout_s": ...}``:
  each input is the list of positional arguments of ``fn_name``, whose return value must equal the output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

Row = dict[str, object]
FIELDS = ("id", "domain", "prompt", "ground_truth")
ROW_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "domain": datasets.Value("string"),
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "ground_truth": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)
"""Arrow features of rows that carry a ``source`` (as ``load_benchmark`` and the DataModule hold them)."""


def rows_dataset(rows: Sequence[Row]) -> datasets.Dataset:
    """Schema rows (with ``source``) as a ``datasets.Dataset``, also when there are none."""
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in ROW_FEATURES}, ROW_FEATURES)


MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
SCRIPT_KEYS = {"test", "entry_point", "timeout_s", "reference"}
STDIO_KEYS, FUNCTIONAL_KEYS = {"inputs", "outputs", "timeout_s"}, {"fn_name"}


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
    valid = {
        "id": str(row["id"]),
        "domain": row["domain"],
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "ground_truth": ground_truth or "",
    }
    if row.get("source") is not None:
        if not isinstance(row["source"], str) or not row["source"]:
            raise ValueError(f"{where}: malformed row, 'source' must be a non-empty string")
        valid["source"] = row["source"]
    return valid


def math_prompt(question: str) -> list[dict[str, str]]:
    """One user message: ``question`` followed by the boxed-answer instruction (appended once)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("a math question must be a non-empty string")
    text = question.strip()
    if not text.endswith(MATH_SUFFIX):
        text = f"{text}\n\n{MATH_SUFFIX}"
    return [{"role": "user", "content": text}]


def script_spec(
    test: str, entry_point: str | None = None, timeout_s: float | None = None, reference: str | None = None
) -> str:
    """A test given as code: with a ``reference`` solution, a check the candidate never shares a process with
    (EvalPlus style); without, a script that runs after the solution (weaker: see ``rewards.code``)."""
    spec: dict[str, Any] = {"test": test}
    if entry_point:
        spec["entry_point"] = entry_point
    if timeout_s is not None:
        spec["timeout_s"] = timeout_s
    if reference is not None:
        spec["reference"] = reference
    return _dump(spec)


def stdio_spec(inputs: Sequence[str], outputs: Sequence[str], timeout_s: float | None = None) -> str:
    """A stdin/stdout test spec (``timeout_s`` per case)."""
    return _dump(_with_timeout({"inputs": list(inputs), "outputs": list(outputs)}, timeout_s))


def functional_spec(
    inputs: Sequence[Sequence[Any]], outputs: Sequence[Any], fn_name: str, timeout_s: float | None = None
) -> str:
    """A functional test spec: ``fn_name(*inputs[i]) == outputs[i]`` (``timeout_s`` per case)."""
    spec = {"inputs": [list(args) for args in inputs], "outputs": list(outputs), "fn_name": fn_name}
    return _dump(_with_timeout(spec, timeout_s))


def _with_timeout(spec: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    return spec if timeout_s is None else {**spec, "timeout_s": timeout_s}


def code_spec_form(spec: str | Mapping) -> str:
    """The form ("script", "stdio" or "functional") of a code test spec; a ValueError when it is none."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as error:
            raise ValueError(f"code test spec is not valid JSON ({error.msg})") from None
    if not isinstance(spec, Mapping):
        raise ValueError("code test spec must be a JSON object")
    keys = set(spec)
    if "test" in keys:
        if not keys <= SCRIPT_KEYS or not isinstance(spec["test"], str):
            raise ValueError(
                f"script test spec takes a string 'test' and only {sorted(SCRIPT_KEYS)}; got {sorted(keys)}"
            )
        if "reference" in keys and not spec.get("entry_point"):
            raise ValueError("a test spec with a 'reference' solution needs its 'entry_point'")
        return "reference" if "reference" in keys else "script"
    form = "functional" if "fn_name" in keys else "stdio"
    allowed = STDIO_KEYS | (FUNCTIONAL_KEYS if form == "functional" else set())
    required = allowed - {"timeout_s"}
    if not required <= keys <= allowed:
        raise ValueError(
            f"{form} test spec takes the keys {sorted(allowed)} (all but timeout_s required); got {sorted(keys)}"
        )
    inputs, outputs = spec["inputs"], spec["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"{form} test spec needs non-empty 'inputs' and 'outputs' lists of one length")
    if form == "stdio" and not all(isinstance(text, str) for text in inputs + outputs):
        raise ValueError("stdio test spec inputs and outputs must be strings")
    if form == "functional" and (not isinstance(spec["fn_name"], str) or not all(isinstance(a, list) for a in inputs)):
        raise ValueError("functional test spec needs a string 'fn_name' and each input a list of arguments")
    return form


def _dump(spec: dict[str, Any]) -> str:
    code_spec_form(spec)
    return json.dumps(spec)
