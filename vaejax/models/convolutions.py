"""Convolutions that XLA:CPU runs fast: each one a single matmul.

On CPU XLA's own convolutions are slow for everything but the forward pass
and input gradient of a stride-1 convolution: transposed (input-dilated)
convolutions, the input gradient of a strided one (itself input-dilated)
and every kernel gradient (a convolution over the batch) took ~95% of the
conv VAE's step. `matmul_conv_general_dilated` (a drop-in for
`lax.conv_general_dilated`, passed to flax's `nn.Conv`) computes each
convolution as one matmul with the batch and positions folded into its
rows, plus data movement that XLA fuses:
  * gather (im2col): the kernel's taps of the padded input side by side,
    [batch, out..., taps * in] @ [taps * in, out]; for strided
    convolutions, and stride-1 ones with no more input than output channels;
  * scatter (col2im): [batch, in..., in] @ [in, taps * out], each tap's
    block of output channels shifted into place and summed; for transposed
    convolutions (every product lands on a real output: no zero taps are
    multiplied) and stride-1 ones with more input than output channels.
Gather and scatter are each other's transposes (slices and concatenation
against pads, split and sums), so reverse mode turns each convolution into
matmuls too: the input gradient is the other formulation with the
transposed kernel, the kernel gradient a [taps * in, batch * positions] x
[batch * positions, out] product. Plain lax ops throughout, so jvp, vmap
and jacfwd work as usual.

`conv(...)` and `conv_transpose(...)` return flax `nn.Conv` modules with the
parameters of `nn.Conv` / `nn.ConvTranspose` (same names, shapes and
initialisers, so checkpoints are interchangeable) and their outputs and
gradients to float rounding (tests/convolutions_test.py); `impl` chooses:
  'lax'        XLA's own convolutions;
  'matmul'     the formulation above ('polyphase', the name of an earlier
               rewrite, is read as 'matmul' so saved configs still load);
  'auto'       'matmul' on CPU, 'lax' on GPU and TPU (cuDNN and the TPU
               compiler run strided and dilated convolutions well).
"""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ('auto', 'lax', 'matmul')
_RENAMED_IMPLS = {'polyphase': 'matmul'}


def conv_transpose_padding(kernel_size, stride):
  """(before, after) padding of the dilated input for 'SAME' output size
  (in_size * stride), as `lax.conv_transpose` computes it."""
  pad_len = kernel_size + stride - 2
  before = (kernel_size - 1 if stride > kernel_size - 1
            else -(-pad_len // 2))
  return before, pad_len - before


def _is_channels_last(dimension_numbers, n):
  if dimension_numbers is None:
    return False
  lhs, rhs, out = dimension_numbers
  spatial = tuple(range(1, n + 1))
  return (tuple(lhs) == (0, n + 1) + spatial and tuple(out) == tuple(lhs)
          and tuple(rhs) == (n + 1, n) + tuple(range(n)))


def _taps(kernel_size):
  return list(itertools.product(*[range(k) for k in kernel_size]))


def _gather_taps(x, kernel_size, strides, padding):
  """[batch, in..., c] -> [batch, out..., taps * c], tap t of output o being
  x[strides * o + t - padding_before] (zero outside x)."""
  x = lax.pad(x, jnp.zeros((), x.dtype),
              [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)])
  out = [(size - k) // s + 1
         for size, k, s in zip(x.shape[1:-1], kernel_size, strides)]
  return jnp.concatenate([
      lax.slice(x, (0, *tap, 0),
                (x.shape[0], *[t + (m - 1) * s + 1
                               for t, m, s in zip(tap, out, strides)],
                 x.shape[-1]),
                (1, *strides, 1))
      for tap in _taps(kernel_size)], axis=-1)


def _scatter_taps(patches, kernel_size, strides, padding, spatial):
  """The transpose of `_gather_taps` for an input of size `spatial`: every
  tap's block of channels added at the positions it was gathered from.

  Position i = s * b + a gets the taps t with (t - before) = a (mod s),
  shifted by (t - before - a) / s: one sum of shifted blocks per phase a,
  then the s^n phases interleaved (depth to space). Each product lands once:
  no zeros are summed.
  """
  n = len(kernel_size)
  taps = _taps(kernel_size)
  channels = patches.shape[-1] // len(taps)
  pieces = lax.split(patches, [channels] * len(taps), axis=n + 1)
  out, batch = patches.shape[1:1 + n], patches.shape[0]
  blocks = [-(-size // s) for size, s in zip(spatial, strides)]
  phases = []
  for phase in itertools.product(*[range(s) for s in strides]):
    total = jnp.zeros((batch, *blocks, channels), patches.dtype)
    for piece, tap in zip(pieces, taps):
      offsets = [t - lo - a for t, (lo, _), a in zip(tap, padding, phase)]
      if any(o % s for o, s in zip(offsets, strides)):
        continue
      shifts = [o // s for o, s in zip(offsets, strides)]
      total = total + lax.pad(
          piece, jnp.zeros((), piece.dtype),
          [(0, 0, 0)] + [(sh, b - m - sh, 0)
                         for sh, b, m in zip(shifts, blocks, out)]
          + [(0, 0, 0)])
    phases.append(total)
  if len(phases) == 1:
    full = phases[0]
  else:
    full = jnp.stack(phases, axis=1).reshape(batch, *strides, *blocks,
                                             channels)
    full = full.transpose(
        0, *[axis for j in range(n) for axis in (1 + n + j, 1 + j)],
        1 + 2 * n)
    full = full.reshape(batch, *[b * s for b, s in zip(blocks, strides)],
                        channels)
  return full[(slice(None),) + tuple(slice(0, size) for size in spatial)]


def _matmul(x, kernel_matrix):
  n = x.ndim - 2
  return lax.dot_general(x, kernel_matrix, (((n + 1,), (0,)), ((), ())))


def _gather_conv(lhs, rhs, strides, padding):
  n = lhs.ndim - 2
  patches = _gather_taps(lhs, rhs.shape[:n], strides, padding)
  return _matmul(patches, rhs.reshape(-1, rhs.shape[-1]))


def _scatter_conv(lhs, rhs, lhs_dilation, padding):
  """An input-dilated convolution as the transpose of a strided gather.

  Input pixel i times kernel tap k lands on output d * i + before - k: with
  the kernel flipped (tap t = k_max - k) that is d * i + t - (k_max -
  before), the positions a stride-d gather with padding k_max - before
  reads.
  """
  n = lhs.ndim - 2
  kernel_size, (in_features, out_features) = rhs.shape[:n], rhs.shape[n:]
  spatial = lhs.shape[1:-1]
  out_size = [(size - 1) * d + lo + hi - k + 2 for size, d, (lo, hi), k
              in zip(spatial, lhs_dilation, padding, kernel_size)]
  flipped = rhs[(slice(None, None, -1),) * n]
  kernel_matrix = jnp.moveaxis(
      flipped.reshape(-1, in_features, out_features), 0, 1).reshape(
          in_features, -1)
  gather_padding = [
      (k - 1 - lo, (size - 1) * d + lo + 1 - out)
      for k, (lo, _), size, d, out
      in zip(kernel_size, padding, spatial, lhs_dilation, out_size)]
  return _scatter_taps(_matmul(lhs, kernel_matrix), kernel_size,
                       lhs_dilation, gather_padding, out_size)


def matmul_conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1,
    precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` as one matmul (see the top).

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
  # The copied side of the matmul is taps times the smaller channel count.
  if dilated_input or (not strided and rhs.shape[-2] > rhs.shape[-1]):
    return _scatter_conv(lhs, rhs, lhs_dilation, padding)
  return _gather_conv(lhs, rhs, strides, padding)


def resolve_conv_impl(impl):
  impl = _RENAMED_IMPLS.get(impl, impl)
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={impl!r}; use one of {CONV_IMPLS}.')
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'lax'
  return impl


def conv_function(impl):
  """The `lax.conv_general_dilated` that `impl` runs (for layers that hold
  their own kernel, like pixelcnn.MaskedConv)."""
  return (matmul_conv_general_dilated if resolve_conv_impl(impl) == 'matmul'
          else lax.conv_general_dilated)


def conv(features, kernel_size, strides=None, impl='auto', **kwargs):
  """`nn.Conv(features, kernel_size, strides, padding='SAME', ...)`."""
  return nn.Conv(features, kernel_size, strides=strides,
                 conv_general_dilated=conv_function(impl), **kwargs)


def conv_transpose(features, kernel_size, strides, impl='auto', **kwargs):
  """`nn.ConvTranspose(features, kernel_size, strides)` ('SAME' padding,
  output size = input size * strides) as an input-dilated `nn.Conv`."""
  padding = [conv_transpose_padding(k, s)
             for k, s in zip(kernel_size, strides)]
  return nn.Conv(features, kernel_size, strides=1, padding=padding,
                 input_dilation=strides,
                 conv_general_dilated=conv_function(impl), **kwargs)
