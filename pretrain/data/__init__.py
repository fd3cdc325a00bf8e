"""K2's pretraining data sequence: prepare, verify, inspect and read chunked token data (``k2hf data ...``)."""

from .config import DataConfig, FimConfig, SubsetConfig, load_data_config
from .reader import PreparedData

__all__ = ["DataConfig", "FimConfig", "PreparedData", "SubsetConfig", "load_data_config"]
