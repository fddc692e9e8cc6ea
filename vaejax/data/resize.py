"""Resizing uint8 images to `config.data.image_size` (bilinear, antialiased
when shrinking: Pillow's resize widens its filter by the scale factor)."""

import dataclasses

import numpy as np
import PIL.Image

from vaejax.data.dataset import Dataset
from vaejax.data.dataset import Split
from vaejax.data.idx import DataError


def parse_image_size(image_size) -> tuple[int, int] | None:
  """`config.data.image_size` as (height, width), or None when unset.

  `--config.data.image_size=32,32` gives (32, 32); `=32` gives (32,), a
  square.
  """
  if image_size is None:
    return None
  size = tuple(image_size)
  if len(size) == 1:
    size = size * 2
  if (len(size) != 2 or not all(isinstance(n, int) and not isinstance(n, bool)
                                for n in size) or min(size) < 1):
    raise DataError(
        f'data.image_size={image_size!r}: expected a height and a width in '
        f'pixels, e.g. --config.data.image_size=32,32 (or 32 for a square).')
  return size


def resize_image(image: PIL.Image.Image, size: tuple[int, int]
                 ) -> PIL.Image.Image:
  """`image` resized to `size` = (height, width), unless it has that size."""
  height, width = size
  if image.size == (width, height):
    return image
  return image.resize((width, height), PIL.Image.Resampling.BILINEAR)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, height, width, C], channel by channel
  (so any number of channels works)."""
  if images.shape[1:3] == size:
    return images
  resized = np.empty((len(images), *size, images.shape[3]), np.uint8)
  for index, image in enumerate(images):
    for channel in range(images.shape[3]):
      resized[index, ..., channel] = np.asarray(resize_image(
          PIL.Image.fromarray(image[..., channel]), size))
  return resized


def resized(dataset: Dataset, size: tuple[int, int] | None) -> Dataset:
  """`dataset` with every split resized to `size` (None: unchanged)."""
  if size is None or tuple(dataset.image_shape[:2]) == size:
    return dataset

  def resize_split(split):
    if split is None:
      return None
    return Split(resize_images(split.images, size), split.labels)

  return dataclasses.replace(
      dataset, train=resize_split(dataset.train),
      validation=resize_split(dataset.validation),
      test=resize_split(dataset.test),
      image_shape=(*size, dataset.image_shape[2]),
      source=f'{dataset.source}, resized to {size[0]}x{size[1]}')
