"""The named operations every model is built from.

Each operation that an LRP rule or a pruning mask must reach is its own small
module, so that rules and masks can target it by its path (``layer1.0.conv1``,
``blocks.2.attn.softmax``) without the model knowing about LRP: the rules are
attached from outside by intercepting module calls (``flax.linen.intercept_methods``).
Convolutions, dense layers and norms are flax's own modules; this file adds the
parameter-free operations, which flax expresses as plain functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
  """Product of two activations, ``a @ b`` over the last two axes.

  Attention uses two: ``Q K^T`` and ``A V``; AttnLRP gives them their own rule.
  """

  @nn.compact
  def __call__(self, a, b):
    return jnp.matmul(a, b)


class Sum(nn.Module):
  """Sum of same-shaped tensors (residual connections)."""

  @nn.compact
  def __call__(self, *xs):
    out = xs[0]
    for x in xs[1:]:
      out = out + x
    return out


class MaxPool(nn.Module):
  """Max pooling over NHWC inputs, padded with -inf as torch does."""

  window: int
  stride: int
  padding: int = 0

  @nn.compact
  def __call__(self, x):
    pad = ((self.padding, self.padding),) * 2
    return nn.max_pool(x, (self.window,) * 2, (self.stride,) * 2, pad)


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


class Conv(nn.Conv):
  """flax's Conv that also adds a ``bias`` found in its variables when it was
  built without one: folding a BatchNorm into a bias-free conv
  (``pxp_jax.canonize``) gives it a bias, and the model keeps working."""

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
