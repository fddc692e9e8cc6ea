"""Pictures drawn with NumPy and PIL (no plotting library).

* `traversal_codes`: the codes of a latent traversal, one row per dimension;
  the decoding is the family's business (`vaejax.evaluators.figures`).
* `scatter_plot`: 2-D points coloured by class, with a legend of class
  names, as an RGB image in [0, 1] like the other image grids.
* `line_plot`: curves (learning curves, `vaejax.curves`) with round ticks,
  dashed reference lines and a legend.
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
# line_plot marks every point of a series with a dot up to this many points.
MAX_DOTS = 40


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


def _font_and_measure():
  """PIL's default font and a function giving a text's (width, height)."""
  font = ImageFont.load_default()
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))

  def text_size(text):
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    return right - left, bottom - top

  return font, text_size


def _legend_size(names, text_size):
  """(width, line height) of a legend of coloured swatches and names."""
  line_height = max(text_size(name)[1] for name in names) + 6
  swatch = line_height - 6
  return swatch + 6 + max(text_size(name)[0] for name in names), line_height


def _draw_legend(draw, font, left, top, names, colours, line_height):
  swatch = line_height - 6
  for row, (name, colour) in enumerate(zip(names, colours)):
    row_top = top + row * line_height
    draw.rectangle((left, row_top, left + swatch, row_top + swatch),
                   fill=colour)
    draw.text((left + swatch + 6, row_top), name, fill=BLACK, font=font)


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
  font, text_size = _font_and_measure()
  legend_width, line_height = _legend_size(class_names, text_size)
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
  _draw_legend(draw, font, margin + plot_size + margin, margin, class_names,
               colours, line_height)
  return np.asarray(image, np.float32) / 255.0


def nice_ticks(low, high, count=6):
  """Round tick values (1, 2 or 5 times a power of ten apart) inside
  [low, high], about `count` of them."""
  if not high > low:
    return np.array([low], np.float64)
  raw = (high - low) / max(count - 1, 1)
  power = 10.0 ** np.floor(np.log10(raw))
  spacing = power * min((m for m in (1, 2, 5, 10) if m * power >= raw))
  first = np.ceil(low / spacing - 1e-9) * spacing
  ticks = np.arange(first, high + 1e-9 * spacing, spacing)
  # Exact decimals (0.30000000000000004 -> 0.3) for the labels.
  # (+ 0.0 turns -0.0 into 0.0.)
  return np.round(ticks, max(0, int(-np.floor(np.log10(spacing))) + 1)) + 0.0


def _tick_label(value):
  return f'{value:g}' if abs(value) < 1e6 else f'{value:.3g}'


class LineAxes:
  """The data-to-pixel map of `line_plot`: x to the right, y upwards, the
  box (left, top, right, bottom) in pixels spanning [x_low, x_high] and
  [y_low, y_high]."""

  def __init__(self, box, x_range, y_range):
    self.box, self.x_range, self.y_range = box, x_range, y_range

  def pixels(self, x, y):
    left, top, right, bottom = self.box
    (x_low, x_high), (y_low, y_high) = self.x_range, self.y_range
    px = left + (np.asarray(x, np.float64) - x_low) / (x_high - x_low) * (
        right - left)
    py = bottom - (np.asarray(y, np.float64) - y_low) / (y_high - y_low) * (
        bottom - top)
    return px, py


def _padded_range(values, fraction=0.05):
  low, high = float(np.min(values)), float(np.max(values))
  padding = fraction * (high - low) if high > low else max(abs(low), 1.0) * 0.05
  return low - padding, high + padding


def line_plot(series, x_label, y_label, title, references=(),
              plot_size=(480, 300), margin=48, y_range=None):
  """Draws curves with axes, round ticks and a legend.

  Args:
    series: [(name, xs, ys)], one coloured line each (with a dot per point
      when it has at most MAX_DOTS points).
    x_label, y_label, title: texts on the axes and above the plot.
    references: [(name, y)], dashed grey horizontal lines labelled at their
      right end (published numbers, targets).
    plot_size: (width, height) of the plotting box in pixels.
    y_range: (low, high) shown; default: every point and reference, padded.

  Returns:
    (float32 [height, width, 3] in [0, 1], the `LineAxes` it used).
  """
  if not series or any(len(xs) == 0 or len(xs) != len(ys)
                       for _, xs, ys in series):
    raise ValueError('line_plot needs at least one series, each with as many '
                     'x as y values and at least one point.')
  font, text_size = _font_and_measure()
  names = [name for name, _, _ in series]
  colours = class_colours(len(series))
  legend_width, line_height = _legend_size(names, text_size)
  reference_width = max([text_size(n)[0] for n, _ in references] + [0])
  plot_width, plot_height = plot_size
  left, top = margin + 16, margin
  box = (left, top, left + plot_width, top + plot_height)
  width = box[2] + 8 + reference_width + margin // 2 + legend_width + 16
  height = box[3] + margin
  image = Image.new('RGB', (int(width), int(height)), WHITE)
  draw = ImageDraw.Draw(image)

  all_x = np.concatenate([np.asarray(xs, np.float64) for _, xs, _ in series])
  all_y = np.concatenate([np.asarray(ys, np.float64) for _, _, ys in series]
                         + [np.array([y for _, y in references], np.float64)])
  x_range = _padded_range(all_x, 0.02)
  axes = LineAxes(box, x_range, y_range or _padded_range(all_y))

  for tick in nice_ticks(*axes.x_range):
    px, _ = axes.pixels(tick, axes.y_range[0])
    draw.line((px, box[3], px, box[3] + 4), fill=BLACK)
    label = _tick_label(tick)
    draw.text((px - text_size(label)[0] / 2, box[3] + 6), label, fill=BLACK,
              font=font)
  for tick in nice_ticks(*axes.y_range):
    _, py = axes.pixels(axes.x_range[0], tick)
    draw.line((box[0], py, box[2], py), fill=(235, 235, 235))
    draw.line((box[0] - 4, py, box[0], py), fill=BLACK)
    label = _tick_label(tick)
    draw.text((box[0] - 6 - text_size(label)[0], py - text_size(label)[1] / 2),
              label, fill=BLACK, font=font)
  label_y = []  # Reference labels, top to bottom, at least a line apart.
  for name, y in sorted(references, key=lambda r: -r[1]):
    _, py = axes.pixels(axes.x_range[0], y)
    for start in range(box[0], box[2], 8):
      draw.line((start, py, min(start + 4, box[2]), py), fill=FRAME_GREY)
    label_y.append(max(py - text_size(name)[1] / 2,
                       label_y[-1] + line_height - 4 if label_y else -np.inf))
    draw.text((box[2] + 4, label_y[-1]), name, fill=BLACK, font=font)
  # The curves are drawn on a copy and pasted inside the box: a y_range
  # narrower than the data cuts them at its edges.
  layer = image.copy()
  layer_draw = ImageDraw.Draw(layer)
  for (name, xs, ys), colour in zip(series, colours):
    px, py = axes.pixels(xs, ys)
    points = list(zip(px.tolist(), py.tolist()))
    if len(points) > 1:
      layer_draw.line(points, fill=colour, width=2)
    if len(points) <= MAX_DOTS:
      for x, y in points:
        layer_draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
  image.paste(layer.crop(box), box[:2])

  draw.rectangle(box, outline=FRAME_GREY)
  draw.text((box[0], 6), title, fill=BLACK, font=font)
  # The y label above its axis (PIL draws no rotated text), the x label
  # centred under the tick labels.
  draw.text((4, top - line_height - 2), y_label, fill=BLACK, font=font)
  draw.text(((box[0] + box[2] - text_size(x_label)[0]) / 2, box[3] + 22),
            x_label, fill=BLACK, font=font)
  _draw_legend(draw, font, box[2] + 8 + reference_width + margin // 2, top,
               names, colours, line_height)
  return np.asarray(image, np.float32) / 255.0, axes
