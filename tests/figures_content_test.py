"""What the PNGs in W/images show: grid sizes, a 2-D manifold that varies
smoothly across its grid, reconstructions that differ from their inputs by
the error the evaluation reports, interpolations that start and end at the
reconstructions of their two images."""
import glob
import json
import os

import numpy as np
import PIL.Image
import pytest

from vaejax import images
from vaejax import train
from conftest import tiny_config

TILE = 28
EVAL_EXAMPLES = 32  # The figures' 32 inputs are all the evaluated examples.


@pytest.fixture(scope='module')
def workdir(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('latent2'))
  config = tiny_config(tiny_data_dir, arg='latent=2,runlocal',
                       **{'eval.max_examples': EVAL_EXAMPLES})
  train.train_and_evaluate(config, workdir)
  return workdir


def png_path(workdir, name):
  (path,) = glob.glob(os.path.join(workdir, 'images', f'{name}_step*.png'))
  return path


def read_png(workdir, name):
  """The unscaled grid of figure `name` as floats in [0, 1], cut out of the
  captioned PNG by the box it records."""
  return images.read_grid(png_path(workdir, name))


def tiles(grid, num_rows, num_columns, padding=1):
  """[num_rows, num_columns, 28, 28] tiles of a grid of 28 x 28 images."""
  step = TILE + padding
  return np.stack([np.stack([
      grid[padding + r * step:padding + r * step + TILE,
           padding + c * step:padding + c * step + TILE]
      for c in range(num_columns)]) for r in range(num_rows)])


@pytest.mark.parametrize('name, rows, columns, padding', [
    ('reconstructions', 8, 8, 1),  # 4 rows of 8 inputs, each above its row
    ('samples', 8, 8, 1),
    ('interpolations', 8, 10, 1),
    ('traversals', 2, 11, 1),  # one row per latent dimension
    ('manifold', 20, 20, 0),
])
def test_grid_sizes(workdir, name, rows, columns, padding):
  grid = read_png(workdir, name)
  assert grid.shape == (rows * (TILE + padding) + padding,
                        columns * (TILE + padding) + padding)
  # The padding is white and the tiles are not: something was drawn.
  if padding:
    assert np.all(grid[0] == 1.0) and np.all(grid[:, 0] == 1.0)
  drawn = tiles(grid, rows, columns, padding)
  assert np.ptp(drawn.reshape(rows * columns, -1).mean(axis=1)) > 0


def test_manifold_varies_smoothly_across_the_grid(workdir):
  manifold = tiles(read_png(workdir, 'manifold'), 20, 20, padding=0)
  corners = np.abs(manifold[0, 0] - manifold[-1, -1]).mean()
  across = np.abs(manifold[:, 0] - manifold[:, -1]).mean()
  down = np.abs(manifold[0] - manifold[-1]).mean()
  # The decoded image changes along both latent axes, by more than the
  # PNG's rounding (1/255) ...
  assert min(corners, across, down) > 2 / 255, (corners, across, down)
  # ... and continuously: neighbouring tiles (0.16 prior standard
  # deviations apart) differ far less than the opposite edges of the grid
  # (3.3 apart). A grid of unrelated images would not.
  neighbours = max(np.abs(np.diff(manifold, axis=0)).mean(),
                   np.abs(np.diff(manifold, axis=1)).mean())
  assert neighbours < 0.25 * min(across, down), (neighbours, across, down)


def test_reconstructions_differ_from_inputs_by_the_reported_error(workdir):
  pairs = tiles(read_png(workdir, 'reconstructions'), 8, 8)
  inputs, reconstructions = pairs[0::2], pairs[1::2]
  # The inputs are the evaluation's binarised test images.
  assert set(np.unique(inputs)) <= {0.0, 1.0}
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    reported = json.load(f)['reconstruction_mse']
  from_png = np.mean((inputs - reconstructions) ** 2)
  # The PNG rounds each reconstructed pixel r to 8 bits, by |e| <= 1/510:
  # (x - r - e)^2 - (x - r)^2 = e^2 - 2e(x - r), so the two means differ by
  # at most 2 sqrt(mse) / 510 + 1 / 510^2 (Cauchy-Schwarz).
  bound = 2 * np.sqrt(reported) / 510 + 1 / 510 ** 2
  assert abs(from_png - reported) <= bound, (from_png, reported, bound)
  assert reported > 10 * bound  # the reconstructions are not the inputs


def test_interpolations_start_and_end_at_the_reconstructions(workdir):
  pairs = tiles(read_png(workdir, 'reconstructions'), 8, 8)
  reconstructions = pairs[1::2].reshape(32, TILE, TILE)
  interpolations = tiles(read_png(workdir, 'interpolations'), 8, 10)
  # Row i goes from the code of test image 2i to that of image 2i + 1.
  for first, last, row in zip(reconstructions[0:16:2],
                              reconstructions[1:16:2], interpolations):
    np.testing.assert_allclose(row[0], first, atol=1.01 / 255)
    np.testing.assert_allclose(row[-1], last, atol=1.01 / 255)
    assert np.abs(row[0] - row[-1]).mean() > 2 / 255


@pytest.mark.parametrize('name, rows, columns, padding, title, row_labels', [
    ('reconstructions', 8, 8, 1, 'test inputs and their reconstructions',
     ('input', 'reconstruction') * 4),
    ('traversals', 2, 11, 1, 'one latent dimension per row', None),
    ('manifold', 20, 20, 0, 'decoded 2-D latent grid', ()),
])
def test_pngs_are_scaled_up_and_captioned(workdir, name, rows, columns,
                                          padding, title, row_labels):
  image = PIL.Image.open(png_path(workdir, name))
  top, left, bottom, right = map(int, image.text['grid_box'].split())
  scale = int(image.text['scale'])
  assert image.text['title'].startswith(title)
  # Tiles of 28 px are drawn at least 3x (84 px), a 20 x 20 grid at 2x.
  assert scale == (2 if name == 'manifold' else 3)
  assert (bottom - top, right - left) == (
      scale * (rows * (TILE + padding) + padding),
      scale * (columns * (TILE + padding) + padding))
  pixels = np.asarray(image, np.float64) / 255.0
  # Each grid pixel is a scale x scale block.
  grid = pixels[top:bottom, left:right]
  np.testing.assert_array_equal(
      grid, np.repeat(np.repeat(grid[::scale, ::scale], scale, 0), scale, 1))
  # The title is written above the grid: dark pixels in the band.
  assert top > 0 and pixels[:top].min() < 0.5
  if row_labels is None:
    # Traversal rows are labelled with their latent dimension.
    assert left > 0 and pixels[top:bottom, :left].min() < 0.5
  elif row_labels:
    # A label in the margin of each row of tiles, none across row borders.
    row_height = (bottom - top) / rows
    margin = pixels[top:bottom, :left]
    for row in range(rows):
      band = margin[int(row * row_height) + 2:int((row + 1) * row_height) - 2]
      assert band.min() < 0.5, row
  else:
    assert left == 0


def test_row_labels_must_match_the_rows():
  with pytest.raises(ValueError, match='3 row labels for 2 rows'):
    images.tile_picture(np.zeros((8, 4, 4, 1)), 4, row_labels=('a', 'b', 'c'))
