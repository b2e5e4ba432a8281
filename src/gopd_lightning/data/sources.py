"""Training and evaluation rows from files and hub datasets, adapted to the project's schema.

Row formats (``DataSource.format``; ``auto`` detects it from the fields of the rows):

- ``schema``: rows already in the project's schema;
- ``verl``: ``prompt`` (chat list), ``reward_model.ground_truth``, ``data_source``/``ability`` (code
  when either names a code source, math otherwise), ``extra_info``;
- ``eurus``: Eurus-2-RL rows, which are verl rows whose code ground truths are APPS-style
  ``{"inputs", "outputs", "fn_name"?}`` JSON (the ``verl`` adapter converts those too);
- ``deepmath``: DeepMath-103K (``question``, ``final_answer``, ``difficulty``); the prompt is the
  question with the boxed-answer instruction.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets

from gopd_lightning.data.schema import Row, functional_spec, math_prompt, script_spec, stdio_spec, validate_row

TOY_PREFIX, BENCHMARK_PREFIX, HUB_PREFIX = "toy:", "benchmark:", "hf:"
JSON_LINES, JSON_ARRAY, PARQUET = (".jsonl", ".jsonl.gz"), (".json",), (".parquet",)
CODE_SOURCE = re.compile(r"code|apps|taco|leetcode|humaneval|mbpp", re.IGNORECASE)
Records = Iterable[tuple[str, Any]]
"""``(where, record)`` pairs; ``where`` names the file (or hub split) and row number for error messages."""


@dataclass
class DataSource:
    """Where rows come from."""

    path: str
    """``toy:<family>`` (the offline toy world), ``benchmark:<name>`` (see ``load_benchmark``),
    ``hf:<hub id>`` (a hub dataset, read with ``datasets.load_dataset``) or a local .jsonl, .jsonl.gz,
    .json or .parquet file."""
    split: str = "train"
    """Split of the source (toy: "train" or "val"; hub: the split to load; unused for files and benchmarks)."""
    limit: int | None = None
    """At most this many rows (a toy source generates exactly this many; default 1024)."""
    seed: int = 0
    """Seed of a generated source."""
    name: str | None = None
    """Name stored in each row's ``source`` (per-benchmark metrics). Default: the benchmark name, the hub id,
    the file name without extensions, or the toy path; rows that carry their own ``source`` then keep it."""
    weight: float | None = None
    """Mixing weight among the training sources. When any training source sets one, training rows are
    drawn from the sources with these relative probabilities (unset weights count as 1); otherwise the
    sources are concatenated."""
    format: Literal["auto", "schema", "verl", "eurus", "deepmath"] = "auto"
    """Row format of a file or hub source; "auto" detects it from the rows' fields."""
    min_difficulty: float | None = None
    """Keep only rows whose numeric ``difficulty`` is at least this (DeepMath-103K: the paper keeps >= 6)."""
    domains: list[str] | None = None
    """Keep only rows of these domains (e.g. the code rows of Eurus-2-RL, which also holds math)."""
    file: str | None = None
    """Local copy of a ``benchmark:`` source in its upstream file format (default: its hub dataset)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of a ``benchmark:`` source (e.g. livecodebench ``start_date``/``end_date``)."""
    data_files: str | list[str] | None = None
    """Files of an ``hf:`` dataset to read (``datasets.load_dataset``'s ``data_files``), e.g. the authors'
    ``DeepMath-103K/train_filtered_level6.parquet`` of ``hf:Keven16/G-OPD-Training-Data``."""

    def __post_init__(self) -> None:
        if self.weight is not None and self.weight <= 0:
            raise ValueError(f"data source {self.path!r}: weight must be positive, got {self.weight}")
        if self.data_files is not None and not self.path.startswith(HUB_PREFIX):
            raise ValueError(f"data source {self.path!r}: data_files picks files of an {HUB_PREFIX}<id> dataset only")

    @property
    def default_name(self) -> str:
        """The source name used when ``name`` is unset."""
        for prefix in (BENCHMARK_PREFIX, HUB_PREFIX):
            if self.path.startswith(prefix):
                return self.path[len(prefix) :]
        if self.path.startswith(TOY_PREFIX):
            return self.path
        return Path(self.path).name.split(".")[0]


@dataclass(frozen=True)
class RowFormat:
    """How records of one format become schema rows."""

    adapt: Callable[[Mapping, int, str], Mapping]
    """(record, index in its file, source name) -> a row to validate."""
    fields: tuple[str, ...]
    """The record fields the adapter reads (others are not loaded from Arrow-backed sources)."""


def read_records(path: Path) -> Records:
    """The records of a local .jsonl(.gz), .json (array of objects) or .parquet file."""
    if path.name.endswith(JSON_LINES):
        return _json_lines(path)
    if path.name.endswith(JSON_ARRAY):
        return _json_array(path)
    if path.name.endswith(PARQUET):
        return dataset_records(datasets.Dataset.from_parquet(str(path)), str(path))
    raise ValueError(f"{path}: unsupported file type; use one of {JSON_LINES + JSON_ARRAY + PARQUET}")


def hub_records(hub_id: str, split: str) -> Records:
    """The records of one split of a hub dataset."""
    return dataset_records(datasets.load_dataset(hub_id, split=split), f"{hub_id}[{split}]")


def dataset_records(dataset: datasets.Dataset, label: str) -> Records:
    """The rows of a ``datasets.Dataset`` as records named ``label:<row number>``."""
    return ((f"{label}:{number}", record) for number, record in enumerate(dataset, start=1))


def read_source(source: DataSource) -> list[Row]:
    """The schema rows of a file or ``hf:`` source, adapted from its format and filtered."""
    if source.path.startswith(HUB_PREFIX):
        hub_id = source.path[len(HUB_PREFIX) :]
        label = f"{hub_id}[{source.split}]" if source.data_files is None else f"{hub_id}/{source.data_files}"
        files = {} if source.data_files is None else {"data_files": source.data_files}
        dataset = datasets.load_dataset(hub_id, split=source.split, **files)
        return _adapt_dataset(dataset, source, label)
    path = Path(source.path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data source {source.path!r} is neither a toy source nor an existing file "
            f"(other sources: {BENCHMARK_PREFIX}<name>, {HUB_PREFIX}<hub id>)"
        )
    if path.name.endswith(PARQUET):
        return _adapt_dataset(datasets.Dataset.from_parquet(str(path)), source, str(path))
    return _adapt_records(read_records(path), source)


def detect_format(fields: Iterable[str]) -> str:
    """The row format that a record with these fields has."""
    fields = set(fields)
    if "reward_model" in fields:
        return "verl"
    if "final_answer" in fields:
        return "deepmath"
    return "schema"


def code_spec_from_apps(ground_truth: Any) -> str:
    """A code test spec from APPS-style tests (Eurus-2-RL, verl), or from a spec already in our form.

    Stdin inputs/outputs given as lists of lines are joined with newlines (as APPS' runner does);
    functional outputs are kept as given (APPS often wraps each return value in a one-element list).
    """
    spec = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if not isinstance(spec, Mapping):
        raise ValueError("a code ground truth must be a JSON object")
    if "test" in spec:
        return script_spec(spec["test"], spec.get("entry_point"), spec.get("timeout_s"))
    if "inputs" not in spec or "outputs" not in spec:
        raise ValueError(f"a code ground truth needs 'inputs' and 'outputs' (or 'test'); got {sorted(spec)}")
    if spec.get("fn_name"):
        return functional_spec(spec["inputs"], spec["outputs"], spec["fn_name"])
    return stdio_spec([_lines(text) for text in spec["inputs"]], [_lines(text) for text in spec["outputs"]])


def answer_text(value: Any) -> str:
    """A gold answer as a string (numbers are written out; None is no answer)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"an answer must be a string or a number, got {type(value).__name__}")


def _from_verl(record: Mapping, index: int, source_name: str) -> Mapping:
    reward = record.get("reward_model")
    if not isinstance(reward, Mapping) or "ground_truth" not in reward:
        raise ValueError("'reward_model.ground_truth' is missing")
    tags = f"{record.get('ability') or ''} {record.get('data_source') or ''}"
    domain = "code" if CODE_SOURCE.search(tags) else "math"
    truth = reward["ground_truth"]
    return {
        "id": f"{source_name}/{index}",
        "domain": domain,
        "prompt": record.get("prompt"),
        "ground_truth": code_spec_from_apps(truth) if domain == "code" else answer_text(truth),
    }


def _from_deepmath(record: Mapping, index: int, source_name: str) -> Mapping:
    return {
        "id": f"{source_name}/{index}",
        "domain": "math",
        "prompt": math_prompt(record["question"]),
        "ground_truth": answer_text(record["final_answer"]),
    }


VERL = RowFormat(_from_verl, ("prompt", "reward_model", "data_source", "ability"))
FORMATS = {
    "schema": RowFormat(lambda record, index, name: record, ("id", "domain", "prompt", "ground_truth", "source")),
    "verl": VERL,
    "eurus": VERL,
    "deepmath": RowFormat(_from_deepmath, ("question", "final_answer")),
}


def _adapt_dataset(dataset: datasets.Dataset, source: DataSource, label: str) -> list[Row]:
    """Adapt an Arrow-backed source, loading only the columns its format reads."""
    format_name = detect_format(dataset.column_names) if source.format == "auto" else source.format
    wanted = {*FORMATS[format_name].fields, "difficulty"}
    dataset = dataset.select_columns([name for name in dataset.column_names if name in wanted])
    return _adapt_records(dataset_records(dataset, label), source, format_name)


def _adapt_records(records: Records, source: DataSource, format_name: str | None = None) -> list[Row]:
    """Schema rows from raw records; the format is ``format_name``, or else resolved at the first record."""
    name, rows = source.name or source.default_name, []
    for index, (where, record) in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: malformed row, expected an object, got {type(record).__name__}")
        format_name = format_name or (detect_format(record) if source.format == "auto" else source.format)
        if source.min_difficulty is not None and not _difficult_enough(record, source.min_difficulty, where):
            continue
        try:
            row = FORMATS[format_name].adapt(record, index, name)
        except KeyError as error:
            raise ValueError(f"{where}: malformed {format_name} row, missing field {error}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: malformed {format_name} row: {error}") from None
        rows.append(validate_row(row, where))
        if source.limit is not None and len(rows) >= source.limit:
            break
    return rows


def _difficult_enough(record: Mapping, minimum: float, where: str) -> bool:
    level = record.get("difficulty")
    if not isinstance(level, (int, float)) or isinstance(level, bool):
        raise ValueError(f"{where}: min_difficulty is set but the row has no numeric 'difficulty' ({level!r})")
    return level >= minimum


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None


def _json_array(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: a .json source must hold a list of rows (JSON Lines files end in .jsonl)")
    return ((f"{path}:{number}", record) for number, record in enumerate(records, start=1))


def _lines(text: Any) -> str:
    return "\n".join(map(str, text)) if isinstance(text, list) else text
