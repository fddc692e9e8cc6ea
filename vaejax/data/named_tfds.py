"""Any prepared TFDS image data set by name (`data.name='cifar10'`).

Read from `data.tfds_data_dir` (default $TFDS_DATA_DIR or
~/tensorflow_datasets) / <name> / <version>, newest version first; ArrayRecord
copies need no TensorFlow. The data set needs an `image` feature (uint8) and a
`train` split; a `label` class-label feature and a `test` split are used when
present (else no labels, and `data.test_fraction` of `train` is held out).

vaejax never downloads these itself: preparing one is `tfds build <name>
--file_format=array_record` (it needs TensorFlow), so an offline machine gets
an answer at once, not after TFDS's retries.
"""

import difflib
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from vaejax.data import dataset as dataset_lib
from vaejax.data import resize
from vaejax.data import sources
from vaejax.data.dataset import Dataset
from vaejax.data.dataset import Split
from vaejax.data.idx import DataError


def tfds_names() -> list[str]:
  """TFDS's own data set names (no network: community data sets excluded)."""
  return tfds.list_builders(with_community_datasets=False)


def is_known_name(name: str) -> bool:
  """Whether `name` (or its `name/config` base) is a TFDS data set."""
  return name.split('/')[0] in tfds_names()


def _not_prepared_message(name: str, dataset_dir: pathlib.Path) -> str:
  return (
      f'TFDS data set {name!r} is not prepared in {dataset_dir} (no '
      f'<version>/dataset_info.json). vaejax reads prepared copies and does '
      f"not download them. Prepare it: pip install 'vaejax[tfds-prepare]' && "
      f'tfds build {name} --file_format=array_record [--data_dir=DIR, then '
      f'pass --config.data.tfds_data_dir=DIR].')


def unknown_name_message(name: str, known: list[str]) -> str:
  close = difflib.get_close_matches(name, known + tfds_names(), n=3)
  hint = f' Did you mean {" or ".join(map(repr, close))}?' if close else ''
  return (f'Unknown data set name {name!r}: it is not one of '
          f'{", ".join(known)} nor a TFDS data set.{hint} Set config.data.name '
          f'in the experiment file or with --config.data.name=NAME.')


def _read_examples(builder, split: str) -> list[dict]:
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    data_source = builder.as_data_source(split=split)
    return data_source.__getitems__(list(range(len(data_source))))
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


def _read_split(builder, split: str, has_labels: bool, image_size,
                origin: str) -> Split:
  examples = _read_examples(builder, split)
  if not examples:
    raise DataError(f'{origin} split {split} is empty; prepare the data set '
                    f'again.')
  images = [np.asarray(example['image']) for example in examples]
  if images[0].dtype != np.uint8:
    raise DataError(f'{origin}: images are {images[0].dtype}; vaejax reads '
                    f'8-bit (uint8) images.')
  images = [image[..., np.newaxis] if image.ndim == 2 else image
            for image in images]
  if image_size is not None:
    images = [resize.resize_images(image[np.newaxis], image_size)[0]
              for image in images]
  shapes = {image.shape for image in images}
  if len(shapes) > 1:
    first, other = sorted(shapes)[:2]
    raise DataError(
        f'{origin} split {split} has images of {len(shapes)} shapes (e.g. '
        f'{list(first)} and {list(other)}); set --config.data.image_size=H,W '
        f'to resize every image.')
  labels = None
  if has_labels:
    labels = np.array([example['label'] for example in examples], np.int32)
  return Split(np.stack(images), labels)


def load_named_tfds(data_config) -> Dataset:
  """Reads the prepared TFDS data set `data_config.name` (module docstring)."""
  name = data_config.name
  data_dir = sources.tfds_data_dir_path(data_config.tfds_data_dir)
  dataset_dir = data_dir / name
  version_dirs = sources.prepared_version_dirs(dataset_dir)
  if not version_dirs:
    raise sources.DataNotFoundError(_not_prepared_message(name, dataset_dir))
  version_dir = version_dirs[0]
  builder = tfds.builder_from_directory(version_dir)
  file_format = builder.info.file_format
  if (file_format != tfds.core.FileFormat.ARRAY_RECORD
      and not sources.tensorflow_installed()):
    raise DataError(
        f'{version_dir} is stored as {file_format.value}, which needs '
        f'TensorFlow to read; rebuild it with tfds build {name} '
        f'--file_format=array_record, or pip install tensorflow-cpu.')
  features = dict(builder.info.features.items())
  origin = f'TFDS {name} in {version_dir}'
  if not isinstance(features.get('image'), tfds.features.Image):
    raise DataError(
        f'{origin} has no image feature named "image" (features: '
        f'{sorted(features.keys())}); vaejax trains on image data sets.')
  if 'train' not in builder.info.splits:
    raise DataError(f'{origin} has no train split (splits: '
                    f'{sorted(builder.info.splits.keys())}).')
  label = features.get('label')
  has_labels = isinstance(label, tfds.features.ClassLabel)
  image_size = resize.parse_image_size(data_config.image_size)
  train = _read_split(builder, 'train', has_labels, image_size, origin)
  if 'test' in builder.info.splits:
    test = _read_split(builder, 'test', has_labels, image_size, origin)
  else:
    train, test = dataset_lib.hold_out_test(train, data_config.test_fraction,
                                            origin)
  if train.images.shape[1:] != test.images.shape[1:]:
    raise DataError(
        f'{origin}: training images are {list(train.images.shape[1:])} but '
        f'test images {list(test.images.shape[1:])}; set '
        f'--config.data.image_size=H,W to resize both.')
  class_names = tuple(label.names) if has_labels else ()
  return Dataset(
      name=name, train=train, validation=None, test=test,
      source=f'{origin} ({file_format.value})',
      image_shape=tuple(train.images.shape[1:]),
      num_classes=len(class_names), class_names=class_names)
