"""ResNet-18/34/50 with torchvision's architecture and module names.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the layout
is torchvision's (ResNet v1.5: the stride sits on the 3x3 conv of a
bottleneck), so its state dicts load name for name: ``conv1``, ``bn1``,
``layer2.0.conv1``, ``layer2.0.downsample.0``, ``fc``.
A small-input variant (3x3 stem, no max-pool, a width multiplier) serves 32x32
images.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from pxp_jax.models import layers, spec
from pxp_jax.models.kinds import Kind


class Downsample(nn.Module):
  """The projection shortcut: ``0`` a 1x1 conv, ``1`` its BatchNorm."""

  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.conv(self.features, 1, self.stride, bias=False, name='0')(x)
    return layers.batch_norm(train, '1')(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs and a residual sum (ResNet-18/34)."""

  planes: int
  stride: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    relu = layers.ReLU(name='relu')
    y = layers.conv(self.planes, 3, self.stride, 1, bias=False, name='conv1')(x)
    y = relu(layers.batch_norm(train, 'bn1')(y))
    y = layers.conv(self.planes, 3, 1, 1, bias=False, name='conv2')(y)
    y = layers.batch_norm(train, 'bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = Downsample(self.planes, self.stride, name='downsample')(x, train)
    return relu(layers.Sum(name='residual')(y, x))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, residual sum (ResNet-50)."""

  planes: int
  stride: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    relu = layers.ReLU(name='relu')
    out = self.planes * self.expansion
    y = layers.conv(self.planes, 1, bias=False, name='conv1')(x)
    y = relu(layers.batch_norm(train, 'bn1')(y))
    y = layers.conv(self.planes, 3, self.stride, 1, bias=False, name='conv2')(y)
    y = relu(layers.batch_norm(train, 'bn2')(y))
    y = layers.conv(out, 1, bias=False, name='conv3')(y)
    y = layers.batch_norm(train, 'bn3')(y)
    if self.stride != 1 or x.shape[-1] != out:
      x = Downsample(out, self.stride, name='downsample')(x, train)
    return relu(layers.Sum(name='residual')(y, x))


class Stage(nn.Module):
  """``layerK``: blocks named ``0, 1, ...``; the first one may stride;
  ``remat``: each block under ``nn.remat``."""

  block: Any
  planes: int
  num_blocks: int
  stride: int
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    # (self, x, train): train is a Python bool
    block = (nn.remat(self.block, static_argnums=(2,)) if self.remat
             else self.block)
    for i in range(self.num_blocks):
      x = block(self.planes, self.stride if i == 0 else 1,
                name=str(i))(x, train)
    return x


class ResNet(nn.Module):
  """torchvision's ResNet on NHWC inputs; returns logits.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: ``BasicBlock`` or ``Bottleneck``.
    num_classes: outputs of ``fc``.
    width: multiplier of the stage widths 64, 128, 256, 512.
    small_input: 3x3 stride-1 stem and no max-pool, for 32x32 images.
    remat: recompute each block's activations in the backward pass
      (``nn.remat`` per block): less memory for gradients and relevance at
      the cost of a second forward pass; the same parameters, paths and
      values.
  """

  stage_sizes: Sequence[int]
  block: Any = BasicBlock
  num_classes: int = 1000
  width: float = 1.0
  small_input: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_images(x)
    base = max(1, int(round(64 * self.width)))
    if self.small_input:
      x = layers.conv(base, 3, 1, 1, bias=False, name='conv1')(x)
    else:
      x = layers.conv(base, 7, 2, 3, bias=False, name='conv1')(x)
    x = layers.ReLU(name='relu')(layers.batch_norm(train, 'bn1')(x))
    if not self.small_input:
      x = layers.MaxPool(3, 2, 1, name='maxpool')(x)
    for i, size in enumerate(self.stage_sizes):
      x = Stage(self.block, base * 2**i, size, 1 if i == 0 else 2,
                self.remat, name=f'layer{i + 1}')(x, train)
    x = layers.GlobalAvgPool(name='avgpool')(x)
    return nn.Dense(self.num_classes, name='fc')(x)



def _layer_groups(found, boundaries) -> dict[str, list[str]]:
  """PXP's groups for a ResNet, by stage as the reference's composites
  (Hatefi et al., 2024): the stem conv and ``layer1`` low, the middle
  stages middle, the last stage high (downsample convs with their stage;
  ResNet-18 5/10/5 convs, ResNet-50 11/32/10); dense layers ``fc``.
  ``boundaries``: a cut of the convs in call order instead."""
  if boundaries is not None:
    return spec.groups_by_order(found, boundaries)
  stages: dict[int, list[str]] = {}
  for op in found.of_kind(Kind.CONV):
    match = re.match(r'layer(\d+)\.', op.path)
    stages.setdefault(int(match[1]) if match else 0, []).append(op.path)
  ordered = [stages[k] for k in sorted(stages)]
  return {**spec.split_by_stage(ordered, 2, max(2, len(ordered) - 1)),
          'fc': [op.path for op in found.of_kind(Kind.DENSE)]}


SPEC = spec.register(spec.Spec(
    'resnet', ResNet, transformer=False, classifier='fc',
    layer_groups=_layer_groups,
    checkpoint_names={'torchvision': spec.same_names}))
