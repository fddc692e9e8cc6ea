"""`config.data` -> a Dataset in memory, from whichever source it names.

`data.name` chooses the source:
  * 'mnist', 'fashion_mnist' (KNOWN_DATASETS): IDX files or a TFDS copy
    (sources.py), `data.dir` / `data.tfds_data_dir` / `data.source`;
  * 'npz': a NumPy .npz file at `data.path` (own_data.py);
  * 'image_folder': PNG/JPEG files under the folder `data.path` (own_data.py);
  * any other name: a prepared TFDS data set of that name in
    `data.tfds_data_dir` (named_tfds.py), e.g. 'cifar10'.
Then, for every source: `data.image_size` resizes the images,
`data.test_fraction` is the held-out share when the source has no test split,
and `data.validation_size` moves the last training examples to a validation
split. `check_data_config` checks all of this before anything is read.
"""

import numbers
import pathlib

from vaejax.data import dataset as dataset_lib
from vaejax.data import named_tfds
from vaejax.data import own_data
from vaejax.data import resize
from vaejax.data import sources
from vaejax.data.dataset import Dataset
from vaejax.data.idx import DataError

OWN_DATA_LOADERS = {
    'npz': own_data.load_npz,
    'image_folder': own_data.load_image_folder,
}
_OWN_DATA_KINDS = {'npz': 'a .npz file', 'image_folder': 'a folder of PNG/JPEG '
                   'images'}


def _named_source_names() -> list[str]:
  return [*OWN_DATA_LOADERS, *sorted(sources.KNOWN_DATASETS)]


def check_data_config(data_config) -> None:
  """Raises DataError for a `config.data` that cannot work, before reading.

  Checks the name, that each location key is one the source reads, that
  named locations exist, and the ranges of test_fraction, validation_size
  and image_size.
  """
  name = data_config.name
  if not isinstance(name, str) or not name:
    raise DataError(f'data.name={name!r}; set it to one of '
                    f'{", ".join(_named_source_names())} or a TFDS data set '
                    f'name such as cifar10.')
  is_own_data = name in OWN_DATA_LOADERS
  if is_own_data:
    for key in ('dir', 'tfds_data_dir'):
      if data_config[key]:
        raise DataError(
            f'data.{key}={data_config[key]!r} is not read for data.name='
            f'{name!r}, which reads data.path; remove data.{key}.')
    if data_config.source != 'auto':
      raise DataError(
          f'data.source={data_config.source!r} applies to mnist and '
          f"fashion_mnist; with data.name={name!r} leave it 'auto'.")
    path = data_config.path
    if not path:
      raise DataError(f'data.name={name!r} reads {_OWN_DATA_KINDS[name]} '
                      f'named by data.path; pass --config.data.path=PATH.')
    if not pathlib.Path(path).expanduser().exists():
      raise DataError(f'data.path={path!r} does not exist; pass the path of '
                      f'{_OWN_DATA_KINDS[name]} (data.name={name!r}).')
  elif data_config.path:
    raise DataError(
        f'data.path={data_config.path!r} is read only with data.name='
        f"'npz' or 'image_folder' (data.name={name!r}); remove it, or set "
        f'data.name.')
  if name not in sources.KNOWN_DATASETS and not is_own_data:
    prepared = sources.prepared_version_dirs(
        sources.tfds_data_dir_path(data_config.tfds_data_dir) / name)
    if not prepared and not named_tfds.is_known_name(name):
      raise DataError(named_tfds.unknown_name_message(
          name, _named_source_names()))
    if data_config.dir or data_config.source == 'idx':
      raise DataError(
          f'data.name={name!r} is read from TFDS; data.dir and '
          f"data.source='idx' are for the IDX files of mnist and "
          f'fashion_mnist. Use data.tfds_data_dir for the TFDS directory.')
  tfds_data_dir = data_config.tfds_data_dir
  if tfds_data_dir and not pathlib.Path(tfds_data_dir).expanduser().is_dir():
    raise DataError(
        f'data.tfds_data_dir={tfds_data_dir!r} is not a directory; pass the '
        f'directory TFDS prepared the data set in (tfds build ... '
        f'--data_dir=DIR), or leave it unset for $TFDS_DATA_DIR or '
        f'~/tensorflow_datasets.')
  test_fraction = data_config.test_fraction
  if (not isinstance(test_fraction, numbers.Real)
      or not 0 < test_fraction < 1):
    raise DataError(
        f'data.test_fraction={test_fraction!r} must be a fraction in (0, 1): '
        f'the share of examples held out for testing when the data has no '
        f'test split.')
  validation_size = data_config.validation_size
  if not isinstance(validation_size, int) or validation_size < 0:
    raise DataError(
        f'data.validation_size={validation_size!r} must be 0 (no validation '
        f'split) or a positive number of training examples.')
  resize.parse_image_size(data_config.image_size)


def load_dataset(data_config) -> Dataset:
  """Loads the data set `data_config` names (module docstring).

  Raises:
    DataNotFoundError: the data is not where the config says or vaejax
      looks; the message says what was tried and how to get the data.
    DataError: the config or the data is invalid; the message says what to
      change.
  """
  check_data_config(data_config)
  name = data_config.name
  if name in OWN_DATA_LOADERS:
    dataset = OWN_DATA_LOADERS[name](data_config)
  elif name in sources.KNOWN_DATASETS:
    dataset = sources.load_known_dataset(data_config)
  else:
    dataset = named_tfds.load_named_tfds(data_config)
  dataset = resize.resized(dataset,
                           resize.parse_image_size(data_config.image_size))
  return dataset_lib.hold_out_validation(dataset, data_config.validation_size)
