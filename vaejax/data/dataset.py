"""A data set in memory: splits of uint8 images with optional labels.

Every source (IDX files, TFDS, `.npz` files, image folders) returns a
`Dataset`. A data set without labels has `labels=None` in each split and
`num_classes=0`: training needs only images; what needs labels (probes,
cluster accuracy, label-coloured plots) asks `Dataset.has_labels`.
"""

import dataclasses

import numpy as np

from vaejax.data.idx import DataError

# The permutation that shuffles an image folder and picks a held-out test
# split is fixed, so the split does not change with the training seed.
HOLD_OUT_SEED = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """Examples of one split: images uint8 [N, H, W, C], labels int32 [N] or
  None (an unlabelled data set)."""
  images: np.ndarray
  labels: np.ndarray | None

  def __len__(self) -> int:
    return len(self.images)

  def take(self, indices) -> 'Split':
    """The examples at `indices` (a slice or an index array)."""
    return Split(self.images[indices],
                 None if self.labels is None else self.labels[indices])


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A whole data set in memory.

  Attributes:
    name: `config.data.name`: a known data set, a TFDS name, 'npz' or
      'image_folder'.
    train: training examples (without those moved to `validation`).
    validation: the last `validation_size` training examples, or None.
    test: test examples.
    source: where the examples were read from, for logs and reports.
    image_shape: (H, W, C) of every image.
    num_classes: labels are in [0, num_classes); 0 when there are no labels.
    class_names: the name of each label; () when there are no labels.
  """
  name: str
  train: Split
  validation: Split | None
  test: Split
  source: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]

  @property
  def has_labels(self) -> bool:
    return self.num_classes > 0


def hold_out_validation(dataset: Dataset, validation_size: int) -> Dataset:
  """Moves the last `validation_size` training examples to `validation`."""
  train = dataset.train
  if validation_size == 0:
    return dataset
  if not 0 < validation_size < len(train):
    raise DataError(
        f'validation_size={validation_size} must be 0 (no validation split) '
        f'or between 1 and {len(train) - 1}: the training split has '
        f'{len(train)} examples.')
  return dataclasses.replace(
      dataset, train=train.take(slice(None, -validation_size)),
      validation=train.take(slice(-validation_size, None)))


def shuffled(split: Split) -> Split:
  """`split` in a fixed random order (HOLD_OUT_SEED)."""
  order = np.random.default_rng(HOLD_OUT_SEED).permutation(len(split))
  return split.take(order)


def hold_out_test(examples: Split, test_fraction: float,
                  origin: str) -> tuple[Split, Split]:
  """(train, test): a fixed random `test_fraction` of `examples` (at least
  one) is test."""
  num_test = max(1, round(len(examples) * test_fraction))
  if not 0 < num_test < len(examples):
    raise DataError(
        f'{origin} has no test split, and data.test_fraction={test_fraction} '
        f'of its {len(examples)} examples leaves '
        f'{num_test} for testing and {len(examples) - num_test} for training; '
        f'set --config.data.test_fraction to a fraction in (0, 1) that leaves '
        f'both at least one example, or give the data a test split.')
  examples = shuffled(examples)
  return (examples.take(slice(None, -num_test)),
          examples.take(slice(-num_test, None)))
