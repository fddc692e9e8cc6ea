"""Loading whole image-classification data sets into memory as numpy arrays.

The data sets of KNOWN_DATASETS, from two sources, tried in this order when
`source='auto'`:
  * IDX files (the format MNIST and Fashion-MNIST are distributed in), from
    `$VAEJAX_DATA_DIR` or the system directory Debian's
    `dataset-fashion-mnist` package installs to;
  * a TFDS copy prepared in ArrayRecord format, read without TensorFlow,
    downloaded only with TensorFlow installed and the download host serving
    a small file within `download_timeout_s` (else failing in seconds).
A directory the user names (`data.dir`, `data.tfds_data_dir`) is the only
place read: without the data there, that is an error, not a fallback.
"""

import dataclasses
import http.client
import importlib.util
import os
import pathlib
import re
import threading
import urllib.parse
import urllib.request

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vaejax.data.dataset import Dataset
from vaejax.data.dataset import Split
from vaejax.data.idx import DataError
from vaejax.data.idx import read_idx
from vaejax.data.known_datasets import DataNotFoundError
from vaejax.data.known_datasets import DatasetSpec
from vaejax.data.known_datasets import IDX_FILE_STEMS
from vaejax.data.known_datasets import KNOWN_DATASETS

# Debian's dataset-* packages install data sets under this directory.
SYSTEM_DATA_ROOT = '/usr/share/datasets'
DATA_DIR_ENV_VAR = 'VAEJAX_DATA_DIR'
SOURCES = ('auto', 'idx', 'tfds')


@dataclasses.dataclass(frozen=True, eq=False)
class _LoadedSplits:
  train: Split
  test: Split
  source: str


def load_known_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
  """Loads a data set of KNOWN_DATASETS from IDX files or a TFDS copy.

  Args:
    data_config: with fields `name` (a key of KNOWN_DATASETS), `dir`
      (directory with the four IDX files; when set, the only place read),
      `source` ('auto', 'idx' or 'tfds'), `tfds_data_dir` (default:
      $TFDS_DATA_DIR or ~/tensorflow_datasets) and `download_timeout_s`
      (connection probe before a TFDS download).

  Returns:
    The data set (no validation split), with `source` saying where it came
    from.

  Raises:
    DataNotFoundError: no source has the data; the message lists each
      location tried, why it failed, and how to install the data.
    DataError: the config is invalid, `data.dir` is set but does not hold
      the IDX files, or the data found is malformed.
  """
  name = data_config.name
  spec = KNOWN_DATASETS[name]
  source = data_config.source
  if source not in SOURCES:
    raise DataError(f'Unknown data source {source!r}; known sources: '
                    f'{", ".join(SOURCES)}.')
  if data_config.dir and data_config.tfds_data_dir:
    raise DataError(
        f'data.dir={data_config.dir!r} (IDX files) and data.tfds_data_dir='
        f'{data_config.tfds_data_dir!r} (a TFDS copy) are both set; set the '
        f'one that holds {name}.')
  if data_config.dir:
    if source == 'tfds':
      raise DataError(
          f'data.dir={data_config.dir!r} names IDX files, but data.source='
          "'tfds'; for a TFDS copy pass --config.data.tfds_data_dir=DIR, "
          "or set data.source='idx' (or 'auto').")
    loaded = _load_from_named_idx_dir(name, spec,
                                      pathlib.Path(data_config.dir))
  else:
    if data_config.tfds_data_dir and source == 'idx':
      raise DataError(
          f'data.tfds_data_dir={data_config.tfds_data_dir!r} names a TFDS '
          "copy, but data.source='idx'; for IDX files pass "
          '--config.data.dir=DIR.')
    failed_attempts = []
    loaded = None
    # A TFDS directory the user names is the only place read.
    if source in ('auto', 'idx') and not data_config.tfds_data_dir:
      loaded = _load_from_idx(name, spec, failed_attempts)
    if loaded is None and source in ('auto', 'tfds'):
      loaded = _load_from_tfds(spec, data_config.tfds_data_dir,
                               data_config.download_timeout_s,
                               failed_attempts)
    if loaded is None:
      raise DataNotFoundError(
          _not_found_message(name, spec, source, failed_attempts))
  logging.info('Loaded %s from %s: %d train, %d test examples.',
               name, loaded.source, len(loaded.train), len(loaded.test))
  return Dataset(
      name=name,
      train=loaded.train,
      validation=None,
      test=loaded.test,
      source=loaded.source,
      image_shape=spec.image_shape,
      num_classes=spec.num_classes,
      class_names=spec.class_names,
  )


def _validated_split(
    images: np.ndarray, labels: np.ndarray, spec: DatasetSpec, origin: str,
    fix: str
) -> Split:
  """Checks images [N, H, W, C] and labels [N] against `spec`."""
  if images.dtype != np.uint8 or images.shape[1:] != spec.image_shape:
    raise DataError(
        f'{origin}: expected uint8 images of shape [N, '
        f'{", ".join(map(str, spec.image_shape))}], got {images.dtype} '
        f'{list(images.shape)}; {fix}.')
  if labels.ndim != 1:
    raise DataError(f'{origin}: expected labels of shape [N], got '
                    f'{list(labels.shape)}; {fix}.')
  if len(images) != len(labels):
    raise DataError(f'{origin}: {len(images)} images but {len(labels)} '
                    f'labels; {fix}.')
  if len(labels) and not 0 <= labels.min() <= labels.max() < spec.num_classes:
    raise DataError(
        f'{origin}: labels range over [{labels.min()}, {labels.max()}], '
        f'expected [0, {spec.num_classes - 1}]; {fix}.')
  return Split(images=images, labels=labels.astype(np.int32))


# IDX files.


def _idx_search_dirs(
    name: str, spec: DatasetSpec
) -> list[tuple[str, pathlib.Path | None]]:
  """(description, directory or None when unset) for each place to look
  when data.dir is not set."""
  env_dir = os.environ.get(DATA_DIR_ENV_VAR) or None
  env_dirs = [None]
  if env_dir:
    env_dirs = list(dict.fromkeys(
        pathlib.Path(env_dir) / sub for sub in
        ('', name, name.replace('_', '-'))))
  system_dir = pathlib.Path(SYSTEM_DATA_ROOT) / spec.system_dir_name
  return ([(f'${DATA_DIR_ENV_VAR}', d) for d in env_dirs]
          + [('system data directory', system_dir)])


def _idx_paths(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """The IDX files present in `directory`, plain or gzipped, by split part."""
  paths = {}
  for part, stem in IDX_FILE_STEMS.items():
    for file_name in (stem, f'{stem}.gz'):
      if (directory / file_name).is_file():
        paths[part] = directory / file_name
        break
  return paths


def _read_idx_split(
    images_path: pathlib.Path, labels_path: pathlib.Path, spec: DatasetSpec
) -> Split:
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  origin = f'{images_path} and {labels_path}'
  fix = 're-download or reinstall the files'
  if images.ndim != 3:
    raise DataError(f'{images_path}: expected images of shape [N, H, W], got '
                    f'{list(images.shape)}; {fix}.')
  return _validated_split(images[..., np.newaxis], labels, spec, origin, fix)


def _missing_idx_files(paths: dict[str, pathlib.Path]) -> list[str]:
  return [f'{IDX_FILE_STEMS[part]}[.gz]'
          for part in IDX_FILE_STEMS if part not in paths]


def _read_idx_dir(spec: DatasetSpec, directory: pathlib.Path,
                  paths: dict[str, pathlib.Path]) -> _LoadedSplits:
  return _LoadedSplits(
      train=_read_idx_split(paths['train_images'], paths['train_labels'],
                            spec),
      test=_read_idx_split(paths['test_images'], paths['test_labels'], spec),
      source=f'IDX files in {directory}',
  )


def _load_from_named_idx_dir(
    name: str, spec: DatasetSpec, directory: pathlib.Path
) -> _LoadedSplits:
  """Reads the directory the user named (data.dir): no other place."""
  if not directory.is_dir():
    raise DataNotFoundError(
        f'data.dir={str(directory)!r} is not a directory. Pass the directory '
        f'that holds the four {name} IDX files, or leave data.dir unset to '
        f'search ${DATA_DIR_ENV_VAR}, {SYSTEM_DATA_ROOT} and TFDS.')
  paths = _idx_paths(directory)
  missing = _missing_idx_files(paths)
  if missing:
    raise DataNotFoundError(
        f'data.dir={str(directory)!r} does not hold the {name} IDX files: '
        f'missing {", ".join(missing)}. Put the four files there, or leave '
        f'data.dir unset to search ${DATA_DIR_ENV_VAR}, {SYSTEM_DATA_ROOT} '
        f'and TFDS.')
  return _read_idx_dir(spec, directory, paths)


def _load_from_idx(
    name: str, spec: DatasetSpec, failed_attempts: list[str]
) -> _LoadedSplits | None:
  """Reads the first directory holding all four IDX files, if any."""
  for description, directory in _idx_search_dirs(name, spec):
    if directory is None:
      failed_attempts.append(f'IDX files in {description}: not set')
      continue
    where = f'IDX files in {directory} ({description})'
    if not directory.is_dir():
      failed_attempts.append(f'{where}: no such directory')
      continue
    paths = _idx_paths(directory)
    missing = _missing_idx_files(paths)
    if missing:
      failed_attempts.append(f'{where}: missing {", ".join(missing)}')
      continue
    return _read_idx_dir(spec, directory, paths)
  return None


# TFDS.


def tensorflow_installed() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def can_download(url: str, timeout_s: float) -> bool:
  """Whether an HTTP GET of `url` answers with a 2xx status within timeout_s.

  A real request, not just a TCP connection, so that a proxy or captive portal
  that accepts every connection does not pass. It runs in a daemon thread
  because name resolution ignores socket timeouts and can hang for long on a
  machine without DNS.
  """
  succeeded = threading.Event()
  finished = threading.Event()

  def fetch_headers():
    try:
      with urllib.request.urlopen(url, timeout=timeout_s) as response:
        if 200 <= response.status < 300:
          succeeded.set()
    except (OSError, http.client.HTTPException):
      pass
    finally:
      finished.set()

  threading.Thread(target=fetch_headers, daemon=True).start()
  finished.wait(timeout_s)
  return succeeded.is_set()


def tfds_data_dir_path(tfds_data_dir: str | os.PathLike | None) -> pathlib.Path:
  """The explicit data dir, else TFDS's default (read now, not at import)."""
  data_dir = (tfds_data_dir or os.environ.get('TFDS_DATA_DIR')
              or '~/tensorflow_datasets')
  return pathlib.Path(data_dir).expanduser()


def prepared_version_dirs(dataset_dir: pathlib.Path) -> list[pathlib.Path]:
  """Version directories holding a dataset_info.json, newest first."""
  version_dirs = [
      info_path.parent for info_path in dataset_dir.glob('*/dataset_info.json')
      if re.fullmatch(r'\d+\.\d+\.\d+', info_path.parent.name)]
  return sorted(version_dirs, reverse=True,
                key=lambda d: tuple(int(n) for n in d.name.split('.')))


def _read_tfds_split(
    builder: tfds.core.DatasetBuilder, split: str
) -> dict[str, np.ndarray]:
  """Reads a prepared split into {'image': ..., 'label': ...}.

  ArrayRecord files are read without TensorFlow; other formats (TFRecord is
  what `tfds build` writes by default) need it.
  """
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    data_source = builder.as_data_source(split=split)
    examples = data_source.__getitems__(list(range(len(data_source))))
    return {
        'image': np.stack([example['image'] for example in examples]),
        'label': np.array([example['label'] for example in examples]),
    }
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))


def _read_tfds_prepared(
    builder: tfds.core.DatasetBuilder, spec: DatasetSpec
) -> _LoadedSplits:
  version_dir = builder.data_dir
  fix = f'delete {version_dir} and prepare it again'
  features = set(builder.info.features.keys())
  splits = set(builder.info.splits.keys())
  if not {'image', 'label'} <= features or not {'train', 'test'} <= splits:
    raise DataError(
        f'{version_dir}: expected features image and label and splits train '
        f'and test, found features {sorted(features)} and splits '
        f'{sorted(splits)}; {fix}.')
  loaded = {}
  for split in ('train', 'test'):
    examples = _read_tfds_split(builder, split)
    loaded[split] = _validated_split(
        examples['image'], examples['label'], spec,
        f'{version_dir} split {split}', fix)
  return _LoadedSplits(
      train=loaded['train'], test=loaded['test'],
      source=f'TFDS {spec.tfds_name} ({builder.info.file_format.value}) in '
             f'{version_dir}')


def _load_from_tfds(
    spec: DatasetSpec, tfds_data_dir: str | os.PathLike | None,
    download_timeout_s: float, failed_attempts: list[str]
) -> _LoadedSplits | None:
  """Reads a prepared TFDS copy, preparing one first only if that can work."""
  data_dir = tfds_data_dir_path(tfds_data_dir)
  dataset_dir = data_dir / spec.tfds_name
  version_dirs = prepared_version_dirs(dataset_dir)
  if not version_dirs:
    failed_attempts.append(
        f'TFDS copy in {dataset_dir}: not prepared (no '
        '<version>/dataset_info.json)')
  for version_dir in version_dirs:
    builder = tfds.builder_from_directory(version_dir)
    file_format = builder.info.file_format
    if (file_format == tfds.core.FileFormat.ARRAY_RECORD
        or tensorflow_installed()):
      return _read_tfds_prepared(builder, spec)
    failed_attempts.append(
        f'TFDS copy in {version_dir}: stored as {file_format.value}, which '
        'needs TensorFlow to read; rebuild it with --file_format=array_record')

  download = f'TFDS download of {spec.tfds_name} into {data_dir}'
  if not tensorflow_installed():
    failed_attempts.append(
        f'{download}: TensorFlow is not installed (TFDS needs it to prepare '
        'data)')
    return None
  # TFDS retries a failed download for minutes; one small file tells sooner.
  probe_url = urllib.parse.urljoin(
      spec.download_url, f'{IDX_FILE_STEMS["train_labels"]}.gz')
  if not can_download(probe_url, download_timeout_s):
    failed_attempts.append(
        f'{download}: could not fetch {probe_url} within '
        f'{download_timeout_s:g} s')
    return None
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir,
                         file_format=tfds.core.FileFormat.ARRAY_RECORD)
  builder.download_and_prepare()
  return _read_tfds_prepared(builder, spec)


def _not_found_message(
    name: str, spec: DatasetSpec, source: str, failed_attempts: list[str]
) -> str:
  tried = '\n'.join(f'  - {attempt}' for attempt in failed_attempts)
  fixes = []
  if source in ('auto', 'idx'):
    if spec.debian_package:
      fixes.append(
          f'apt-get install -y {spec.debian_package}  (Debian/Ubuntu; '
          f'installs the IDX files in {SYSTEM_DATA_ROOT}/'
          f'{spec.system_dir_name})')
    file_names = ', '.join(f'{stem}.gz' for stem in IDX_FILE_STEMS.values())
    fixes.append(
        f'put the four IDX files ({file_names}) in a directory DIR, then pass '
        f'--config.data.dir=DIR or set {DATA_DIR_ENV_VAR}=DIR')
  if source in ('auto', 'tfds'):
    fixes.append(
        "prepare it with TFDS: pip install 'vaejax[tfds-prepare]' && "
        f'tfds build {spec.tfds_name} --file_format=array_record '
        '[--data_dir=DIR, then pass --config.data.tfds_data_dir=DIR]')
  fix = '\n'.join(f'  - {fix}' for fix in fixes)
  return (f'No {name} data found (source={source!r}). Tried:\n{tried}\n'
          f'To fix, do one of:\n{fix}')
