"""Gated PixelCNN: an autoregressive categorical model of a grid of codes.

p(x) = prod_i p(x_i | x_<i) in raster order over an H x W grid of integers
in {0..K-1} (the code grid of a VQ-VAE, or binarised pixels with K = 2); the
network gives K logits per position, each computed from the positions before
it only.

References:
  van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu 2016,
  "Conditional Image Generation with PixelCNN Decoders" (gated layers,
  vertical and horizontal stacks, class conditioning);
  van den Oord, Kalchbrenner, Kavukcuoglu 2016, "Pixel Recurrent Neural
  Networks" (masked convolutions, masks A and B);
  van den Oord, Vinyals, Kavukcuoglu 2017, "Neural Discrete Representation
  Learning" (a PixelCNN prior over VQ-VAE codes).

Masks. Mask A lets position i see the positions before it; mask B also lets
it see itself (in the layers after the first, where "itself" already holds
only information from before i). A masked convolution here never multiplies
an always-zero tap: its kernel parameter holds only the bounding box of the
mask's nonzero taps (the rows above and the centre row up to the centre),
the input is padded so that the box sits where it sits in the full kernel,
and the few zeros left inside the box are multiplied into the kernel. The
gated stacks need no mask multiply at all: the vertical stack's kernel is
the k//2 (A) or k//2 + 1 (B) rows above and at the centre, the horizontal
stack's the k//2 (A) or k//2 + 1 (B) columns left of and at the centre, so
the vertical stack sees the rows above (no blind spot) and the horizontal
one the row so far.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from vaejax.models import convolutions

MASK_TYPES = ('A', 'B')


def _check_mask_type(mask_type):
  if mask_type not in MASK_TYPES:
    raise ValueError(f'mask_type={mask_type!r}; use one of {MASK_TYPES}.')


def raster_mask(kernel_size, mask_type):
  """[kh, kw] 0/1 mask of PixelRNN's masked convolution: the rows above the
  centre, and in the centre row the columns left of it (A) or up to and
  including it (B)."""
  _check_mask_type(mask_type)
  height, width = kernel_size
  mask = np.zeros((height, width), np.float32)
  mask[:height // 2] = 1.0
  mask[height // 2, :width // 2 + (mask_type == 'B')] = 1.0
  return mask


def vertical_mask(kernel_size, mask_type):
  """The vertical stack's [k, k] mask: rows above the centre (A), or up to
  and including the centre row (B)."""
  _check_mask_type(mask_type)
  mask = np.zeros((kernel_size, kernel_size), np.float32)
  mask[:kernel_size // 2 + (mask_type == 'B')] = 1.0
  return mask


def horizontal_mask(kernel_size, mask_type):
  """The horizontal stack's [1, k] mask: columns left of the centre (A), or
  up to and including it (B)."""
  _check_mask_type(mask_type)
  mask = np.zeros((1, kernel_size), np.float32)
  mask[0, :kernel_size // 2 + (mask_type == 'B')] = 1.0
  return mask


class MaskedConv(nn.Module):
  """A 'SAME' stride-1 convolution with a fixed 0/1 `mask` on its kernel.

  Equal to a convolution with the kernel multiplied by the mask
  (tests/pixelcnn_test.py), but the `kernel` parameter [box_h, box_w, in,
  features] (initialised as nn.Conv's) is only the bounding box of the
  mask's nonzero taps: taps that are always zero are neither stored nor
  computed.
  """
  features: int
  mask: Any  # a [kh, kw] array of 0/1, odd kh and kw
  use_bias: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'  # convolutions.py: 'auto', 'lax' or 'matmul'

  @nn.compact
  def __call__(self, x):
    mask = np.asarray(self.mask, np.float32)
    rows, cols = np.nonzero(mask)
    if not rows.size:
      raise ValueError('MaskedConv: the mask has no nonzero tap.')
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    box = mask[top:bottom + 1, left:right + 1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*box.shape, x.shape[-1], self.features), jnp.float32)
    if not box.all():
      kernel = kernel * box[:, :, None, None]
    centre_row, centre_col = mask.shape[0] // 2, mask.shape[1] // 2
    # Output (i, j) reads input (i + r - centre_row, j + c - centre_col) for
    # the box's taps (r, c): pad (or crop, where negative) to exactly that.
    x = lax.pad(x.astype(self.dtype), jnp.zeros((), self.dtype),
                [(0, 0, 0), (centre_row - top, bottom - centre_row, 0),
                 (centre_col - left, right - centre_col, 0), (0, 0, 0)])
    kernel = kernel.astype(self.dtype)
    y = convolutions.conv_function(self.conv_impl)(
        x, kernel, (1, 1), 'VALID',
        dimension_numbers=lax.conv_dimension_numbers(
            x.shape, kernel.shape, ('NHWC', 'HWIO', 'NHWC')))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


def gate(h):
  """tanh(a) * sigmoid(b) for h = [a, b] split along channels."""
  a, b = jnp.split(h, 2, axis=-1)
  return jnp.tanh(a) * nn.sigmoid(b)


class GatedLayer(nn.Module):
  """One gated PixelCNN layer (van den Oord et al. 2016, figure 2).

  vertical' = gate(V * vertical + c),
  horizontal' = horizontal + W(gate(H * horizontal + U(V * vertical) + c)),
  with V the vertical-stack convolution, H the horizontal-stack one, U and W
  1x1 convolutions and c a per-class bias (when `num_classes`). Mask A
  layers (the first) have no residual: position i's own input must not reach
  its output.
  """
  features: int
  kernel_size: int
  mask_type: str = 'B'
  num_classes: Optional[int] = None
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, vertical, horizontal, labels=None):
    def stack_conv(mask, name):
      return MaskedConv(2 * self.features, mask, dtype=self.dtype,
                        conv_impl=self.conv_impl, name=name)

    v = stack_conv(vertical_mask(self.kernel_size, self.mask_type),
                   'vertical')(vertical)
    h = stack_conv(horizontal_mask(self.kernel_size, self.mask_type),
                   'horizontal')(horizontal)
    h = h + convolutions.conv(2 * self.features, (1, 1), impl=self.conv_impl,
                              dtype=self.dtype, name='vertical_to_horizontal'
                              )(v)
    if self.num_classes is not None:
      if labels is None:
        raise ValueError('GatedLayer with num_classes needs labels.')
      condition = nn.Embed(self.num_classes, 2 * self.features,
                           name='class_bias')(labels)[:, None, None, :]
      v, h = v + condition, h + condition
    h = convolutions.conv(self.features, (1, 1), impl=self.conv_impl,
                          dtype=self.dtype, name='horizontal_output')(gate(h))
    if self.mask_type == 'B':
      h = h + horizontal
    return gate(v), h


class GatedPixelCNN(nn.Module):
  """Codes [B, H, W] (ints in 0..num_codes-1) -> logits [B, H, W, num_codes].

  Embedding -> a mask-A gated layer with a `first_kernel_size` kernel ->
  `num_layers - 1` mask-B gated layers with `kernel_size` kernels -> ReLU,
  1x1 convolution, ReLU, 1x1 convolution to the logits (on the horizontal
  stack). `labels` [B] (ints in 0..num_classes-1) condition every gate when
  `num_classes` is set. The logits at position i depend only on the codes
  at positions before i in raster order (and on the label).
  """
  num_codes: int
  features: int = 64
  num_layers: int = 8
  kernel_size: int = 3
  first_kernel_size: int = 7
  output_features: int = 256
  num_classes: Optional[int] = None
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  def setup(self):
    self.embedding = nn.Embed(self.num_codes, self.features, name='embedding')
    self.layers = [
        GatedLayer(self.features,
                   self.first_kernel_size if i == 0 else self.kernel_size,
                   'A' if i == 0 else 'B', self.num_classes, self.dtype,
                   self.conv_impl, name=f'gated_{i}')
        for i in range(self.num_layers)]
    self.output_hidden = convolutions.conv(
        self.output_features, (1, 1), impl=self.conv_impl, dtype=self.dtype,
        name='output_hidden')
    self.output = convolutions.conv(
        self.num_codes, (1, 1), impl=self.conv_impl, dtype=self.dtype,
        name='output')

  def __call__(self, codes, labels=None):
    return self.logits_of_embeddings(self.embedding(codes), labels)

  def logits_of_embeddings(self, embeddings, labels=None):
    """The logits from embedded codes [B, H, W, features]: the entry point
    for gradients with respect to the inputs (the causality test)."""
    vertical = horizontal = embeddings.astype(self.dtype)
    for layer in self.layers:
      vertical, horizontal = layer(vertical, horizontal, labels)
    h = self.output_hidden(nn.relu(horizontal))
    return self.output(nn.relu(h)).astype(jnp.float32)
