"""Data sets in memory (IDX files, TFDS, .npz files, image folders) and the
IDX file format."""

from vaejax.data.dataset import Dataset
from vaejax.data.dataset import Split
from vaejax.data.idx import DataError
from vaejax.data.idx import read_idx
from vaejax.data.idx import write_idx
from vaejax.data.loading import check_data_config
from vaejax.data.loading import load_dataset
from vaejax.data.sources import DataNotFoundError
from vaejax.data.sources import KNOWN_DATASETS

__all__ = [
    'DataError',
    'DataNotFoundError',
    'Dataset',
    'KNOWN_DATASETS',
    'Split',
    'check_data_config',
    'load_dataset',
    'read_idx',
    'write_idx',
]
