"""Data sets in memory (IDX files or TFDS) and the IDX file format."""

from vaejax.data.idx import DataError
from vaejax.data.idx import read_idx
from vaejax.data.idx import write_idx
from vaejax.data.sources import DataNotFoundError
from vaejax.data.sources import Dataset
from vaejax.data.sources import KNOWN_DATASETS
from vaejax.data.sources import load_dataset
from vaejax.data.sources import Split

__all__ = [
    'DataError',
    'DataNotFoundError',
    'Dataset',
    'KNOWN_DATASETS',
    'Split',
    'load_dataset',
    'read_idx',
    'write_idx',
]
