"""Convolutions that XLA:CPU runs fast: everything as stride-1 convolutions.

On CPU three kinds of convolution take XLA's slow generic path, and in the
conv VAE they took ~95% of the train step (60-75 examples/s, against
~500 after this rewrite; README, Throughput):
  * transposed (input-dilated) convolutions and their gradients;
  * the input gradient of a strided convolution (itself input-dilated);
  * kernel gradients, computed as convolutions over the batch.
`polyphase_conv_general_dilated` (a drop-in for `lax.conv_general_dilated`,
passed to flax's `nn.Conv`) rewrites them with the same numbers:
  * a stride-s transposed convolution is a stride-1 convolution of the
    undilated input with s^n times the output channels, one group per
    output phase holding the kernel taps that meet a real pixel, then
    interleaved into the output grid (sub-pixel / depth to space);
  * a stride-s convolution is a stride-1 convolution of the s^n phase
    images of the input (space to depth) with a ceil(k/s)-tap kernel;
  * a stride-1 convolution keeps XLA's forward pass and input gradient,
    and its kernel gradient is one matmul per kernel tap (`_conv_by_taps`).

`conv(...)` and `conv_transpose(...)` return flax `nn.Conv` modules with the
parameters of `nn.Conv` / `nn.ConvTranspose` (same names, shapes and
initialisers, so checkpoints are interchangeable) and their outputs and
gradients to float rounding (tests/convolutions_test.py); `impl` chooses:
  'lax'        XLA's own convolutions;
  'polyphase'  the rewrite above;
  'auto'       'polyphase' on CPU, 'lax' on GPU and TPU (cuDNN and the TPU
               compiler run strided and dilated convolutions well).
"""
import functools
import itertools
import string

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ('auto', 'lax', 'polyphase')


def conv_transpose_padding(kernel_size, stride):
  """(before, after) padding of the dilated input for 'SAME' output size
  (in_size * stride), as `lax.conv_transpose` computes it."""
  pad_len = kernel_size + stride - 2
  before = (kernel_size - 1 if stride > kernel_size - 1
            else -(-pad_len // 2))
  return before, pad_len - before


def _phase_taps(kernel_size, dilation, pad_before):
  """0/1 array [R, dilation, kernel_size] and the first input offset.

  Output position d*i + a of the input-dilated convolution sums
  x[i + r] * kernel[k] over the taps k with (a + k - pad_before) = d * r;
  entry [r - r_min, a, k] is 1 for those.
  """
  taps = [((a + k - pad_before) // dilation, a, k)
          for a in range(dilation) for k in range(kernel_size)
          if (a + k - pad_before) % dilation == 0]
  r_min = min(r for r, _, _ in taps)
  r_max = max(r for r, _, _ in taps)
  selection = np.zeros((r_max - r_min + 1, dilation, kernel_size), np.float32)
  for r, a, k in taps:
    selection[r - r_min, a, k] = 1.0
  return selection, r_min


def _is_channels_last(dimension_numbers, n):
  if dimension_numbers is None:
    return False
  lhs, rhs, out = dimension_numbers
  spatial = tuple(range(1, n + 1))
  return (tuple(lhs) == (0, n + 1) + spatial and tuple(out) == tuple(lhs)
          and tuple(rhs) == (n + 1, n) + tuple(range(n)))


def _einsum_axes(n):
  letters = string.ascii_lowercase
  return letters[:n], letters[n:2 * n], letters[2 * n:3 * n]


def _conv_by_taps(lhs, rhs, padding):
  """The stride-1 channels-last convolution as one matmul per kernel tap.

  Only used on tangents (see `_unit_stride_conv`): it is linear in `rhs`,
  and its transpose, the kernel gradient, is then matmuls contracting batch
  and positions. Each tap shifts whichever side has fewer channels (the
  shifted copy is the extra memory traffic): the input window before the
  matmul, or the output after it (whose transpose pads the cotangent).
  """
  n = lhs.ndim - 2
  padded = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                   [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding]
                   + [(0, 0, 0)])
  kernel_size = rhs.shape[:n]
  out_size = [p - k + 1 for p, k in zip(padded.shape[1:-1], kernel_size)]
  shift_output = rhs.shape[-1] < rhs.shape[-2]
  total = None
  for offset in itertools.product(*[range(k) for k in kernel_size]):
    tap = rhs[offset]
    if shift_output:
      full = lax.dot_general(padded, tap, (((n + 1,), (0,)), ((), ())))
      term = lax.slice(full, (0, *offset, 0),
                       (full.shape[0],
                        *[o + m for o, m in zip(offset, out_size)],
                        full.shape[-1]))
    else:
      window = lax.slice(padded, (0, *offset, 0),
                         (padded.shape[0],
                          *[o + m for o, m in zip(offset, out_size)],
                          padded.shape[-1]))
      term = lax.dot_general(window, tap, (((n + 1,), (0,)), ((), ())))
    total = term if total is None else total + term
  return total


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _unit_stride_conv(lhs, rhs, padding, dimension_numbers):
  """A stride-1 channels-last convolution whose kernel gradient is matmuls.

  XLA:CPU computes a convolution's kernel gradient as a convolution over
  the batch, which was the slowest op of the conv VAE's step. Here the
  tangent with respect to the kernel is `_conv_by_taps`, so reverse mode
  (its transpose) gives one [batch * positions, in] x [batch * positions,
  out] matmul per kernel tap. The forward pass and the input gradient stay
  XLA's convolutions; forward mode (jvp, jacfwd) works too.
  """
  n = lhs.ndim - 2
  return lax.conv_general_dilated(lhs, rhs, (1,) * n, padding,
                                  dimension_numbers=dimension_numbers)


@_unit_stride_conv.defjvp
def _unit_stride_conv_jvp(padding, dimension_numbers, primals, tangents):
  lhs, rhs = primals
  lhs_dot, rhs_dot = tangents
  n = lhs.ndim - 2
  out = _unit_stride_conv(lhs, rhs, padding, dimension_numbers)
  out_dot = (lax.conv_general_dilated(lhs_dot, rhs, (1,) * n, padding,
                                      dimension_numbers=dimension_numbers)
             + _conv_by_taps(lhs, rhs_dot, padding))
  return out, out_dot


def _space_to_depth_conv(lhs, rhs, strides, padding, dimension_numbers):
  """A strided convolution as a stride-1 one over s^n phase images.

  With kernel tap k = s*q + p, y[o] = sum_{q,p} x_p[o + q] K[s*q + p], where
  x_p[j] = x_padded[s*j + p]: space to depth, then a ceil(k/s)-tap kernel
  over the s^n * in channels.
  """
  n = lhs.ndim - 2
  batch, in_features = lhs.shape[0], lhs.shape[-1]
  spatial, kernel_size = lhs.shape[1:-1], rhs.shape[:n]
  out_size = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s
              in zip(spatial, padding, kernel_size, strides)]
  taps = [-(-k // s) for k, s in zip(kernel_size, strides)]
  # Pad (or crop) to exactly out + taps - 1 phase rows of s pixels each.
  pads = [(lo, (m + q - 1) * s - size - lo, 0) for (lo, _), size, m, q, s
          in zip(padding, spatial, out_size, taps, strides)]
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              [(0, 0, 0)] + pads + [(0, 0, 0)])
  rows = [m + q - 1 for m, q in zip(out_size, taps)]
  x = x.reshape(batch, *[d for r, s in zip(rows, strides) for d in (r, s)],
                in_features)
  x = x.transpose(0, *range(1, 2 * n + 1, 2), *range(2, 2 * n + 2, 2),
                  2 * n + 1)
  x = x.reshape(batch, *rows, -1)
  selections = []
  for k, s, q in zip(kernel_size, strides, taps):
    selection = np.zeros((q, s, k), np.float32)
    for tap in range(k):
      selection[tap // s, tap % s, tap] = 1.0
    selections.append(selection.astype(rhs.dtype))
  q_ax, p_ax, k_ax = _einsum_axes(n)
  spec = ','.join(q + p + k for q, p, k in zip(q_ax, p_ax, k_ax))
  kernel = jnp.einsum(f'{spec},{k_ax}yz->{q_ax}{p_ax}yz', *selections, rhs)
  kernel = kernel.reshape(*taps, -1, rhs.shape[-1])
  return _unit_stride_conv(x, kernel, ((0, 0),) * n, dimension_numbers)


def _subpixel_conv(lhs, rhs, lhs_dilation, padding, dimension_numbers):
  """An input-dilated (transposed) convolution as a stride-1 one with
  d^n phases of output channels, interleaved (depth to space)."""
  n = lhs.ndim - 2
  batch, out_features = lhs.shape[0], rhs.shape[-1]
  spatial, kernel_size = lhs.shape[1:-1], rhs.shape[:n]
  out_size = [(size - 1) * d + 1 + lo + hi - k + 1 for size, d, (lo, hi), k
              in zip(spatial, lhs_dilation, padding, kernel_size)]
  blocks = [-(-size // d) for size, d in zip(out_size, lhs_dilation)]
  phases = [_phase_taps(k, d, lo) for k, d, (lo, _)
            in zip(kernel_size, lhs_dilation, padding)]
  # kernel [r..., in, (a..., out)]: the taps of each output phase.
  r_ax, a_ax, k_ax = _einsum_axes(n)
  spec = ','.join(r + a + k for r, a, k in zip(r_ax, a_ax, k_ax))
  kernel = jnp.einsum(
      f'{spec},{k_ax}yz->{r_ax}y{a_ax}z',
      *[selection.astype(rhs.dtype) for selection, _ in phases], rhs)
  kernel = kernel.reshape(*kernel.shape[:n + 1], -1)
  # Input rows i + r for r from r_min: pad (or crop, if negative) so the
  # stride-1 convolution gives `blocks` rows per phase.
  pads = tuple((-r_min, block + r_min + selection.shape[0] - 1 - size)
               for (selection, r_min), block, size
               in zip(phases, blocks, spatial))
  y = _unit_stride_conv(lhs, kernel, pads, dimension_numbers)
  # [batch, i..., (a..., out)] -> [batch, (i, a)..., out], then crop.
  y = y.reshape(batch, *blocks, *lhs_dilation, out_features)
  y = y.transpose(0, *[axis for j in range(n) for axis in (1 + j, 1 + n + j)],
                  1 + 2 * n)
  y = y.reshape(batch, *[b * d for b, d in zip(blocks, lhs_dilation)],
                out_features)
  return y[(slice(None),) + tuple(slice(0, size) for size in out_size)]


def polyphase_conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1,
    precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` as stride-1 convolutions (see the top).

  Takes channels-last convolutions without kernel dilation, feature or batch
  groups or a precision/preferred type, with window strides or input
  dilation (not both); everything else goes to `lax.conv_general_dilated`.
  """
  n = lhs.ndim - 2
  strides = tuple(window_strides)
  lhs_dilation = tuple(lhs_dilation or (1,) * n)
  dilated_input = any(d != 1 for d in lhs_dilation)
  strided = any(s != 1 for s in strides)
  if ((dilated_input and strided)
      or any(d != 1 for d in (rhs_dilation or (1,) * n))
      or feature_group_count != 1 or batch_group_count != 1
      or precision is not None or preferred_element_type is not None
      or not _is_channels_last(dimension_numbers, n)):
    return lax.conv_general_dilated(
        lhs, rhs, strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    dilated = [(size - 1) * d + 1
               for size, d in zip(lhs.shape[1:-1], lhs_dilation)]
    padding = lax.padtype_to_pads(dilated, rhs.shape[:n], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if dilated_input:
    return _subpixel_conv(lhs, rhs, lhs_dilation, padding, dimension_numbers)
  if strided:
    return _space_to_depth_conv(lhs, rhs, strides, padding,
                                dimension_numbers)
  return _unit_stride_conv(lhs, rhs, padding, dimension_numbers)


def resolve_conv_impl(impl):
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={impl!r}; use one of {CONV_IMPLS}.')
  if impl == 'auto':
    return 'polyphase' if jax.default_backend() == 'cpu' else 'lax'
  return impl


def _hook(impl):
  return (polyphase_conv_general_dilated
          if resolve_conv_impl(impl) == 'polyphase' else None)


def conv(features, kernel_size, strides=None, impl='auto', **kwargs):
  """`nn.Conv(features, kernel_size, strides, padding='SAME', ...)`."""
  return nn.Conv(features, kernel_size, strides=strides,
                 conv_general_dilated=_hook(impl), **kwargs)


def conv_transpose(features, kernel_size, strides, impl='auto', **kwargs):
  """`nn.ConvTranspose(features, kernel_size, strides)` ('SAME' padding,
  output size = input size * strides) as an input-dilated `nn.Conv`."""
  padding = [conv_transpose_padding(k, s)
             for k, s in zip(kernel_size, strides)]
  return nn.Conv(features, kernel_size, strides=1, padding=padding,
                 input_dilation=strides, conv_general_dilated=_hook(impl),
                 **kwargs)
