"""The named operations every model is built from.

Each operation that an LRP rule or a pruning mask must reach is its own small
module, so that rules and masks can target it by its path (``layer1.0.conv1``,
``blocks.2.attn.softmax``) without the model knowing about LRP: the rules are
attached from outside by intercepting module calls (``pxp_jax.models.taps``), and
what a module computes is read off its class (``pxp_jax.models.kinds``).
Convolutions, dense layers and norms are flax's own modules; this file adds the
parameter-free operations, which flax expresses as plain functions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ReLU(nn.Module):
  """``max(x, 0)``."""

  @nn.compact
  def __call__(self, x):
    return nn.relu(x)


class GELU(nn.Module):
  """Exact (erf) GELU, as torch.nn.GELU() and timm's ViT use."""

  @nn.compact
  def __call__(self, x):
    return nn.gelu(x, approximate=False)


class Softmax(nn.Module):
  """Softmax over the last axis (attention scores over keys)."""

  @nn.compact
  def __call__(self, x):
    return jax.nn.softmax(x, axis=-1)


class MatMul(nn.Module):
  """Product of two activations, ``a @ b`` over the last two axes."""

  @nn.compact
  def __call__(self, a, b):
    return jnp.matmul(a, b)


class QueryKey(MatMul):
  """Attention scores ``Q K^T`` (AttnLRP and CP-LRP give them a rule)."""


class AttentionValue(MatMul):
  """Attention output ``A V`` of the weights ``A`` and the values ``V``."""


class Sum(nn.Module):
  """Sum of same-shaped tensors (residual connections)."""

  @nn.compact
  def __call__(self, *xs):
    out = xs[0]
    for x in xs[1:]:
      out = out + x
    return out


class LayerScale(nn.Module):
  """``x * gamma``: a per-channel scale of the last axis by the parameter
  vector ``gamma`` the caller holds (ConvNeXt's and CaiT's layer scale;
  the block owns ``gamma``, as timm's ``stages.0.blocks.0.gamma``). A
  linear map of ``x`` alone; in the gradient x input convention its plain
  gradient passes relevance unchanged (``R_x = R_y``)."""

  @nn.compact
  def __call__(self, x, gamma):
    return x * gamma


class MaxPool(nn.Module):
  """Max pooling over NHWC inputs, padded with -inf as torch does."""

  window: int
  stride: int
  padding: int = 0

  @nn.compact
  def __call__(self, x):
    return max_pool(x, self.window, self.stride, self.padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int, stride: int, padding: int):
  """Square max pooling of NHWC ``x``; its gradient goes to the first maximum
  of each window in row-major order, as torch's does.

  The gradient is written out (one strided view per window offset) because
  XLA's generic select-and-scatter is several times slower on CPU.
  """
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pad)


def _max_pool_fwd(x, window, stride, padding):
  y = max_pool(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, g):
  x, y = residuals
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
               constant_values=-jnp.inf)
  span = [(size - 1) * stride + 1 for size in y.shape[1:3]]
  place = lambda offset, axis: (offset, xp.shape[axis] - offset - span[axis - 1],
                                stride - 1)
  taken = jnp.zeros(y.shape, bool)
  grad = jnp.zeros(xp.shape, g.dtype)
  for i in range(window):
    for j in range(window):
      view = jax.lax.slice(xp, (0, i, j, 0), (n, i + span[0], j + span[1], c),
                           (1, stride, stride, 1))
      winner = (view == y) & ~taken
      taken = taken | winner
      grad = grad + jax.lax.pad(jnp.where(winner, g, 0), jnp.zeros((), g.dtype),
                                ((0, 0, 0), place(i, 1), place(j, 2), (0, 0, 0)))
  return (grad[:, padding:padding + h, padding:padding + w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class AdaptiveAvgPool(nn.Module):
  """torch's ``AdaptiveAvgPool2d``: output bin ``i`` averages input rows
  ``floor(i*H/h) .. ceil((i+1)*H/h) - 1`` (likewise columns); a linear map."""

  output_size: tuple[int, int]

  @nn.compact
  def __call__(self, x):
    rows = _adaptive_bins(x.shape[1], self.output_size[0])
    cols = _adaptive_bins(x.shape[2], self.output_size[1])
    return jnp.einsum('nhwc,ih,jw->nijc', x, rows.astype(x.dtype),
                      cols.astype(x.dtype))


def _adaptive_bins(size: int, out: int) -> jnp.ndarray:
  """(out, size) averaging matrix of torch's adaptive pooling along one axis."""
  rows = []
  for i in range(out):
    start, end = (i * size) // out, math.ceil((i + 1) * size / out)
    rows.append([1.0 / (end - start) if start <= j < end else 0.0
                 for j in range(size)])
  return jnp.asarray(rows, jnp.float32)


class GlobalAvgPool(nn.Module):
  """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""

  @nn.compact
  def __call__(self, x):
    return jnp.mean(x, axis=(1, 2))


class Flatten(nn.Module):
  """(N, H, W, C) -> (N, C*H*W) in torch's channel-major order, so that the
  dense layer after it has the same weights as the torch model."""

  @nn.compact
  def __call__(self, x):
    return x.transpose(0, 3, 1, 2).reshape((x.shape[0], -1))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None):
  """``jax.lax.conv_general_dilated`` whose input gradient, for a strided
  convolution over few channels (a stem or a patch embedding), is computed
  in space-to-depth form.

  XLA on CPU transposes a stride-``s`` convolution by dilating the cotangent
  with ``s - 1`` zeros per step, which over three channels is several times
  slower than the forward convolution (ResNet's 7x7/2 stem: 61 vs 8 ms at
  batch 8; ViT's 16x16/16 patch embedding far worse). Rearranging each
  ``s x s`` block of the input into channels makes the same map a stride-1
  convolution, whose transpose is cheap. Values and gradients are unchanged.
  """
  plain = functools.partial(
      jax.lax.conv_general_dilated, window_strides=window_strides,
      padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)
  strides = tuple(window_strides)
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        ('NHWC', 'HWIO', 'NHWC'))
  if (lhs.ndim != 4 or len(set(strides)) != 1 or strides[0] == 1
      or lhs.shape[-1] > _FEW_CHANNELS or feature_group_count != 1
      or any(d is not None and tuple(d) != (1, 1)
             for d in (lhs_dilation, rhs_dilation))
      or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        dimension_numbers) != nhwc):
    return plain(lhs, rhs)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides,
                                      padding)
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  return _strided_conv(lhs, rhs, strides[0], pads, precision)


_FEW_CHANNELS = 16


def _nhwc_conv(x, kernel, stride, pads, precision):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=precision)


_strided_conv = jax.custom_vjp(_nhwc_conv, nondiff_argnums=(2, 3, 4))


def _strided_conv_fwd(x, kernel, stride, pads, precision):
  return _strided_conv(x, kernel, stride, pads, precision), (x, kernel)


def _strided_conv_bwd(stride, pads, precision, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda a: _space_to_depth_conv(a, kernel, stride, pads, precision), x)
  _, kernel_vjp = jax.vjp(
      lambda k: _nhwc_conv(x, k, stride, pads, precision), kernel)
  return input_vjp(g)[0], kernel_vjp(g)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def _space_to_depth_conv(x, kernel, stride, pads, precision):
  """The stride-``s`` convolution as a stride-1 one: input blocks ``s x s``
  and kernel taps (zero-padded to multiples of ``s``) moved into channels,
  ``x'[i, j, (a, b, c)] = x[i s + a, j s + b, c]``."""
  n, h, w, c = x.shape
  kh, kw, _, out = kernel.shape
  s = stride
  rows = (h + sum(pads[0]) - kh) // s + 1
  cols = (w + sum(pads[1]) - kw) // s + 1
  kh2, kw2 = -(-kh // s) * s, -(-kw // s) * s
  height, width = (rows - 1) * s + kh2, (cols - 1) * s + kw2
  x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                  ((0, 0, 0), (pads[0][0], height - h - pads[0][0], 0),
                   (pads[1][0], width - w - pads[1][0], 0), (0, 0, 0)))
  x = x.reshape(n, height // s, s, width // s, s, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, height // s, width // s, -1)
  kernel = jnp.pad(kernel, ((0, kh2 - kh), (0, kw2 - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(kh2 // s, s, kw2 // s, s, c, out)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(kh2 // s, kw2 // s, -1,
                                                      out)
  return _nhwc_conv(x, kernel, 1, 'VALID', precision)


class Conv(nn.Conv):
  """flax's Conv that also adds a ``bias`` found in its variables when it was
  built without one: folding a BatchNorm into a bias-free conv
  (``pxp_jax.lrp.canonize``) gives it a bias, and the model keeps working.
  Its convolution is ``conv_general_dilated`` above."""

  conv_general_dilated: Callable | None = conv_general_dilated

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    if not self.use_bias and self.has_variable('params', 'bias'):
      y = y + self.get_variable('params', 'bias')
    return y


KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *,
         bias: bool = True, name: str | None = None) -> nn.Conv:
  """A torch-style 2-D convolution with explicit symmetric padding and
  torchvision's Kaiming-normal (fan-out) initialisation."""
  return Conv(features, (kernel, kernel), (stride, stride),
              padding=((padding, padding), (padding, padding)),
              use_bias=bias, name=name, kernel_init=KAIMING_FAN_OUT)


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  """torch's BatchNorm2d defaults (eps 1e-5, momentum 0.1) in flax terms."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name)


def check_images(x, channels: int = 3, size: Sequence[int] | None = None):
  """Fails early, with a fix, on inputs that are not NHWC float images."""
  if x.ndim != 4:
    raise ValueError(
        f'expected a batch of NHWC images (N, H, W, {channels}), got shape '
        f'{tuple(x.shape)}; add a batch axis with x[None] for a single image')
  if x.shape[-1] != channels:
    hint = (' (it looks like NCHW: transpose with x.transpose(0, 2, 3, 1))'
            if x.shape[1] == channels else '')
    raise ValueError(f'expected {channels} channels last, got shape '
                     f'{tuple(x.shape)}{hint}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'expected float images, got dtype {x.dtype}; convert and '
                    'normalise first (see pxp_jax.data.preprocess)')
  if size is not None and tuple(x.shape[1:3]) != tuple(size):
    raise ValueError(f'this model takes {tuple(size)} images, got '
                     f'{tuple(x.shape[1:3])}; resize or crop first')
