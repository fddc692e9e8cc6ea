"""Image grids: arrays in [0, 1] -> tiled PNG files."""
import os

import numpy as np
from PIL import Image


def make_grid(images, num_columns=None, padding=1):
  """Tiles images [N, H, W, C] (values in [0, 1]) into one [h, w, C] array."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, height, width, channels = images.shape
  num_columns = num_columns or int(np.ceil(np.sqrt(n)))
  num_rows = int(np.ceil(n / num_columns))
  grid = np.ones((num_rows * (height + padding) + padding,
                  num_columns * (width + padding) + padding, channels),
                 np.float32)
  for i, image in enumerate(images):
    row, col = divmod(i, num_columns)
    top = padding + row * (height + padding)
    left = padding + col * (width + padding)
    grid[top:top + height, left:left + width] = image
  return grid


def to_uint8(grid):
  return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path, grid):
  """Writes a [h, w, C] grid in [0, 1] as PNG (atomically)."""
  pixels = to_uint8(grid)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp.png'
  Image.fromarray(pixels).save(tmp)
  os.replace(tmp, path)
