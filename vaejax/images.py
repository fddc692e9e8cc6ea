"""Image grids: arrays in [0, 1] -> tiled, captioned PNG files.

A figure is a `Picture`: a grid of tiles (`make_grid`) with a title and a
label per row of tiles. `render` scales the grid up (nearest neighbour, so
every pixel stays a block of the model's pixel) until a tile is at least
`MIN_TILE_PIXELS` wide, and writes the captions beside and above it; the
PNG records where the grid is (`grid_box`) so that a reader can cut the
tiles back out (tests/figures_content_test.py does).
"""
import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from PIL import PngImagePlugin

# Rendered tiles are at least this wide (28-px tiles: 3x), and a rendered
# grid at most MAX_GRID_PIXELS on its longer side (a 20 x 20 manifold: 2x).
MIN_TILE_PIXELS = 84
MAX_GRID_PIXELS = 1200
FONT_SIZE = 16
MARGIN = 8


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


@dataclasses.dataclass(frozen=True)
class Picture:
  """A figure as saved: `grid` [h, w, C] in [0, 1], a `title` above it and
  `row_labels`, one per row of tiles (top to bottom; '' leaves a row
  unlabelled), beside it. `tile_size` (the tiles' width in the grid, 0 for
  a plot that is not made of tiles) sets the scale."""
  grid: np.ndarray
  title: str = ''
  row_labels: Sequence[str] = ()
  tile_size: int = 0

  def __post_init__(self):
    if self.row_labels and not self.tile_size:
      raise ValueError('row labels need a grid of tiles (tile_size > 0)')


def tile_picture(images, num_columns, title='', row_labels=(), padding=1):
  """A Picture of `images` [N, H, W, C] in rows of `num_columns`."""
  images = np.asarray(images)
  num_rows = math.ceil(len(images) / num_columns)
  if row_labels and len(row_labels) != num_rows:
    raise ValueError(f'{len(row_labels)} row labels for {num_rows} rows')
  return Picture(make_grid(images, num_columns, padding), title,
                 tuple(row_labels), tile_size=images.shape[2])


def scale_of(picture):
  """The integer upscaling `render` applies to `picture`'s grid."""
  if not picture.tile_size:
    return 1
  longest = max(picture.grid.shape[:2])
  return max(1, min(math.ceil(MIN_TILE_PIXELS / picture.tile_size),
                    MAX_GRID_PIXELS // longest))


def _font():
  return ImageFont.load_default(size=FONT_SIZE)


def _text_size(draw, text, font):
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  return right - left, bottom - top


def render(picture):
  """(pixels [H, W, C] float32 in [0, 1], grid_box (top, left, bottom,
  right) of the scaled grid in them, scale). Grey grids stay one channel,
  captions are black on white."""
  scale = scale_of(picture)
  grid = np.clip(np.asarray(picture.grid, np.float32), 0.0, 1.0)
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  if not picture.title and not picture.row_labels:
    return grid, (0, 0, grid.shape[0], grid.shape[1]), scale
  font = _font()
  probe = ImageDraw.Draw(Image.new('L', (1, 1)))
  labels = [label for label in picture.row_labels if label]
  label_width = max((_text_size(probe, l, font)[0] for l in labels),
                    default=0)
  left = MARGIN + label_width + MARGIN if labels else 0
  top = MARGIN + FONT_SIZE + MARGIN if picture.title else 0
  height, width = top + grid.shape[0], left + grid.shape[1]
  if picture.title:
    width = max(width, MARGIN + _text_size(probe, picture.title, font)[0]
                + MARGIN)
  mode = 'L' if grid.shape[-1] == 1 else 'RGB'
  canvas = Image.new(mode, (width, height), 255 if mode == 'L' else
                     (255, 255, 255))
  canvas.paste(Image.fromarray(to_uint8(grid[..., 0] if mode == 'L'
                                        else grid), mode), (left, top))
  draw = ImageDraw.Draw(canvas)
  black = 0 if mode == 'L' else (0, 0, 0)
  if picture.title:
    draw.text((MARGIN, MARGIN), picture.title, fill=black, font=font)
  if picture.row_labels:
    row_height = grid.shape[0] / len(picture.row_labels)
    for row, label in enumerate(picture.row_labels):
      text_width, text_height = _text_size(probe, label, font)
      y = top + (row + 0.5) * row_height - text_height / 2
      draw.text((left - MARGIN - text_width, y), label, fill=black,
                font=font)
  pixels = np.asarray(canvas, np.float32) / 255.0
  if mode == 'L':
    pixels = pixels[..., None]
  return pixels, (top, left, top + grid.shape[0], left + grid.shape[1]), scale


def to_uint8(grid):
  return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path, grid, text: Optional[dict] = None):
  """Writes a [h, w, C] grid in [0, 1] as PNG (atomically), with `text`
  {key: value} as PNG text chunks."""
  pixels = to_uint8(grid)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  info = PngImagePlugin.PngInfo()
  for key, value in (text or {}).items():
    info.add_text(key, str(value))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp.png'
  Image.fromarray(pixels).save(tmp, pnginfo=info)
  os.replace(tmp, path)


def save_picture(path, picture):
  """Renders `picture` to `path`; the PNG's text chunks `grid_box` ('top
  left bottom right' of the scaled grid) and `scale` locate the tiles, and
  `kind` says whether it is a grid of image tiles or a plot.
  Returns the rendered pixels (what TensorBoard shows too)."""
  pixels, box, scale = render(picture)
  save_png(path, pixels, {'grid_box': ' '.join(map(str, box)),
                          'scale': scale, 'title': picture.title,
                          'kind': 'tiles' if picture.tile_size else 'plot'})
  return pixels


def read_grid(path):
  """The unscaled grid of a PNG written by `save_picture`, as floats in
  [0, 1] ([h, w] for grey, [h, w, 3] for colour)."""
  image = Image.open(path)
  top, left, bottom, right = map(int, image.text['grid_box'].split())
  scale = int(image.text['scale'])
  pixels = np.asarray(image, np.float64)[top:bottom:scale, left:right:scale]
  return pixels / 255.0
