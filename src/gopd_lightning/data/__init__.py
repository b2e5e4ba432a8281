"""Prompt data: the row schema, its sources and the DataModule."""

from gopd_lightning.data.datamodule import DataSource, PromptDataModule
from gopd_lightning.data.schema import validate_row

__all__ = ["DataSource", "PromptDataModule", "validate_row"]
