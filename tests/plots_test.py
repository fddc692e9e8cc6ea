"""Latent-space pictures: traversal codes and the labelled scatter plot."""
import chex
import numpy as np

from vaejax.evaluators import plots


def test_traversal_rows_vary_one_dimension_each():
  base = np.arange(5, dtype=np.float32)
  dims = [3, 0]
  values = np.array([[-1.0, 0.0, 1.0], [10.0, 20.0, 30.0]])
  codes = plots.traversal_codes(base, dims, values)
  chex.assert_shape(codes, (6, 5))
  rows = codes.reshape(2, 3, 5)
  for row, dim in enumerate(dims):
    np.testing.assert_array_equal(rows[row, :, dim], values[row])
    others = np.delete(rows[row], dim, axis=1)
    np.testing.assert_array_equal(others, np.tile(np.delete(base, dim), (3, 1)))


def test_class_colours_are_distinct():
  for num_classes in (2, 10, 15):
    colours = plots.class_colours(num_classes)
    assert len(set(colours)) == num_classes


def _pixels_of(grid, colour):
  return np.all(np.round(grid * 255) == np.asarray(colour), axis=-1)


def test_scatter_plot_draws_points_and_legend_in_class_colours():
  class_names = ('zero', 'one', 'two')
  points = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
  grid = plots.scatter_plot(points, [0, 1, 2], class_names,
                                     plot_size=100, margin=20)
  assert grid.ndim == 3 and grid.shape[-1] == 3
  assert grid.min() >= 0.0 and grid.max() <= 1.0
  colours = plots.class_colours(3)
  plot_right = 20 + 100
  for label, colour in enumerate(colours):
    drawn = _pixels_of(grid, colour)
    # Each class shows up in the plot (its point) and in the legend.
    assert drawn[:, :plot_right].any()
    assert drawn[:, plot_right + 1:].any()
  # The second coordinate points up: class 2 at (0, 1) is drawn above
  # class 0 at (0, 0), and class 1 at (1, 1) to the right of class 2.
  rows_of = [np.nonzero(_pixels_of(grid, c)[:, :plot_right])[0].mean()
             for c in colours]
  columns_of = [np.nonzero(_pixels_of(grid, c)[:, :plot_right])[1].mean()
                for c in colours]
  assert rows_of[2] < rows_of[0]
  assert columns_of[1] > columns_of[2]
