"""Prompt data: the row schema, its sources, the evaluation benchmarks and the DataModule."""

from gopd_lightning.data.benchmarks import BENCHMARKS, load_benchmark
from gopd_lightning.data.datamodule import PromptDataModule, load_rows
from gopd_lightning.data.schema import (
    MATH_SUFFIX,
    code_spec_form,
    functional_spec,
    math_prompt,
    script_spec,
    stdio_spec,
    validate_row,
)
from gopd_lightning.data.sources import DataSource

__all__ = [
    "BENCHMARKS",
    "MATH_SUFFIX",
    "DataSource",
    "PromptDataModule",
    "code_spec_form",
    "functional_spec",
    "load_benchmark",
    "load_rows",
    "math_prompt",
    "script_spec",
    "stdio_spec",
    "validate_row",
]
