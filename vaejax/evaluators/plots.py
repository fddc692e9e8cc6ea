"""Pictures of a latent space, drawn with NumPy and PIL (no plotting library).

* `traversal_codes`: the codes of a latent traversal, one row per dimension;
  the decoding is the family's business (`vaejax.evaluators.figures`).
* `scatter_plot`: 2-D points coloured by class, with a legend of class
  names, as an RGB image in [0, 1] like the other image grids.
"""
import colorsys

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# Tableau 10: distinct hues that stay apart for common colour-vision
# deficiencies better than a rainbow does.
TABLEAU_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
    (188, 189, 34), (23, 190, 207))
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
FRAME_GREY = (160, 160, 160)


def traversal_codes(base_code, dims, values):
  """Codes [len(dims) * len(values), D]: row r varies dimension dims[r] of
  `base_code` [D] over `values` [len(dims), len(values)] (one range per
  dimension), keeping the other dimensions fixed."""
  base_code = np.asarray(base_code, np.float32)
  values = np.asarray(values, np.float32)
  codes = np.tile(base_code, (len(dims), values.shape[1], 1))
  for row, dim in enumerate(dims):
    codes[row, :, dim] = values[row]
  return codes.reshape(-1, base_code.shape[-1])


def class_colours(num_classes):
  """One RGB colour per class: Tableau 10, or evenly spaced hues beyond 10."""
  if num_classes <= len(TABLEAU_COLOURS):
    return TABLEAU_COLOURS[:num_classes]
  return tuple(
      tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / num_classes, 0.8,
                                                        0.85))
      for i in range(num_classes))


def scatter_plot(points, labels, class_names, plot_size=320, margin=24,
                 point_radius=1, title='PCA of the codes'):
  """Draws points [N, 2] coloured by integer `labels`, with a legend.

  Axes span the points' range (plus 3%), the first coordinate to the right
  and the second upwards. Points are drawn in a fixed shuffled order, so no
  class always ends up on top.

  Returns float32 [height, width, 3] in [0, 1].
  """
  points = np.asarray(points, np.float64)
  labels = np.asarray(labels)
  colours = class_colours(len(class_names))
  font = ImageFont.load_default()
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))

  def text_size(text):
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    return right - left, bottom - top

  line_height = max(text_size(name)[1] for name in class_names) + 6
  swatch = line_height - 6
  legend_width = swatch + 6 + max(text_size(name)[0] for name in class_names)
  width = margin + plot_size + margin + legend_width + margin
  height = max(margin + plot_size + margin,
               margin + line_height * len(class_names) + margin)
  image = Image.new('RGB', (width, height), WHITE)
  draw = ImageDraw.Draw(image)

  low, high = points.min(axis=0), points.max(axis=0)
  padding = 0.03 * np.maximum(high - low, 1e-12)
  low, high = low - padding, high + padding
  scaled = (points - low) / (high - low)
  pixel_x = margin + scaled[:, 0] * plot_size
  pixel_y = margin + (1.0 - scaled[:, 1]) * plot_size
  for i in np.random.default_rng(0).permutation(len(points)):
    draw.ellipse(
        (pixel_x[i] - point_radius, pixel_y[i] - point_radius,
         pixel_x[i] + point_radius, pixel_y[i] + point_radius),
        fill=colours[int(labels[i]) % len(colours)])

  draw.rectangle((margin, margin, margin + plot_size, margin + plot_size),
                 outline=FRAME_GREY)
  draw.text((margin, margin - line_height), title, fill=BLACK, font=font)
  draw.text((margin + plot_size - text_size('PC 1')[0],
             margin + plot_size + 4), 'PC 1', fill=BLACK, font=font)
  draw.text((margin - text_size('PC 2')[0] - 2, margin), 'PC 2', fill=BLACK,
            font=font)
  legend_left = margin + plot_size + margin
  for row, (name, colour) in enumerate(zip(class_names, colours)):
    top = margin + row * line_height
    draw.rectangle((legend_left, top, legend_left + swatch, top + swatch),
                   fill=colour)
    draw.text((legend_left + swatch + 6, top), name, fill=BLACK, font=font)
  return np.asarray(image, np.float32) / 255.0
