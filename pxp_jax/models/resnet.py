"""ResNet-18/34/50 with torchvision's architecture and module names.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the layout
is torchvision's (ResNet v1.5: the stride sits on the 3x3 conv of a
bottleneck), so its state dicts load name for name: ``conv1``, ``bn1``,
``layer2.0.conv1``, ``layer2.0.downsample.0``, ``fc``.
A small-input variant (3x3 stem, no max-pool, a width multiplier) serves 32x32
images.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np

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


def _has_downsample(block, x) -> bool:
  """A projection shortcut where the block says so, else where the stride
  or the width changes (torchvision's rule)."""
  if block.downsample is not None:
    return block.downsample
  return block.stride != 1 or x.shape[-1] != block.planes * block.expansion


def _block_widths(block, default: tuple[int, ...]) -> tuple[int, ...]:
  if block.widths is None:
    return default
  if len(block.widths) != len(default):
    raise ValueError(f'{type(block).__name__} has {len(default)} convs; got '
                     f'widths {block.widths}')
  return tuple(block.widths)


class BasicBlock(nn.Module):
  """Two 3x3 convs and a residual sum (ResNet-18/34).

  ``widths``: output channels of conv1 and conv2 (default ``planes`` each;
  conv2's is the block's output width, a slimmed block's); ``downsample``:
  whether the shortcut is a projection (default: where the stride or the
  width changes)."""

  planes: int
  stride: int = 1
  widths: tuple[int, ...] | None = None
  downsample: bool | None = None
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    w1, w2 = _block_widths(self, (self.planes, self.planes))
    relu = layers.ReLU(name='relu')
    y = layers.conv(w1, 3, self.stride, 1, bias=False, name='conv1')(x)
    y = relu(layers.batch_norm(train, 'bn1')(y))
    y = layers.conv(w2, 3, 1, 1, bias=False, name='conv2')(y)
    y = layers.batch_norm(train, 'bn2')(y)
    if _has_downsample(self, x):
      x = Downsample(w2, self.stride, name='downsample')(x, train)
    return relu(layers.Sum(name='residual')(y, x))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, residual sum (ResNet-50).

  ``widths``: output channels of conv1, conv2 and conv3 (default
  ``planes, planes, 4 planes``); ``downsample`` as ``BasicBlock``'s."""

  planes: int
  stride: int = 1
  widths: tuple[int, ...] | None = None
  downsample: bool | None = None
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    w1, w2, out = _block_widths(
        self, (self.planes, self.planes, self.planes * self.expansion))
    relu = layers.ReLU(name='relu')
    y = layers.conv(w1, 1, bias=False, name='conv1')(x)
    y = relu(layers.batch_norm(train, 'bn1')(y))
    y = layers.conv(w2, 3, self.stride, 1, bias=False, name='conv2')(y)
    y = relu(layers.batch_norm(train, 'bn2')(y))
    y = layers.conv(out, 1, bias=False, name='conv3')(y)
    y = layers.batch_norm(train, 'bn3')(y)
    if _has_downsample(self, x):
      x = Downsample(out, self.stride, name='downsample')(x, train)
    return relu(layers.Sum(name='residual')(y, x))


class Stage(nn.Module):
  """``layerK``: blocks named ``0, 1, ...``; the first one may stride;
  ``remat``: each block under ``nn.remat``; ``widths``: each block's conv
  widths (None: the defaults); ``downsample``: whether the first block has
  a projection shortcut, the others none (None: torchvision's rule)."""

  block: Any
  planes: int
  num_blocks: int
  stride: int
  remat: bool = False
  widths: tuple[tuple[int, ...] | None, ...] | None = None
  downsample: bool | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    # (self, x, train): train is a Python bool
    block = (nn.remat(self.block, static_argnums=(2,)) if self.remat
             else self.block)
    widths = self.widths or (None,) * self.num_blocks
    for i in range(self.num_blocks):
      x = block(self.planes, self.stride if i == 0 else 1, widths=widths[i],
                downsample=(self.downsample if i == 0 or self.downsample is None
                            else False),
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
    widths: ``((conv path, output channels), ...)`` for convs narrower
      than ``width`` gives (a slimmed model, ``pxp_jax.prune.slim``): ``conv1``,
      ``layer2.0.conv1``, ``layer2.0.downsample.0``, ...; None: every conv
      at its default width. Convs that write the same residual stream (a
      stage's stem or projection shortcut and its blocks' last convs) must
      agree.
  """

  stage_sizes: Sequence[int]
  block: Any = BasicBlock
  num_classes: int = 1000
  width: float = 1.0
  small_input: bool = False
  remat: bool = False
  widths: tuple[tuple[str, int], ...] | None = None

  def __post_init__(self):
    super().__post_init__()
    spec.check_sizes(self, 'stage_sizes')
    if not self.stage_sizes:
      raise ValueError('ResNet: stage_sizes must name at least one stage, '
                       'e.g. (2, 2, 2, 2) for ResNet-18')
    if not (isinstance(self.block, type) and issubclass(self.block, nn.Module)
            and hasattr(self.block, 'expansion')):
      raise ValueError(f'ResNet: block must be BasicBlock or Bottleneck (a '
                       f'flax module class with an expansion), got '
                       f'{self.block!r}')
    if (isinstance(self.width, bool)
        or not isinstance(self.width, (int, float, np.number))
        or not np.isfinite(self.width) or self.width <= 0):
      raise ValueError(f'ResNet: width must be a finite number > 0 (the '
                       f'multiplier of 64, 128, 256, 512), got {self.width!r}')
    spec.check_int(self, 'num_classes')
    spec.check_bool(self, 'small_input', 'remat')
    if self.widths is not None:
      for entry in self.widths:
        if (not isinstance(entry, (tuple, list)) or len(entry) != 2
            or not isinstance(entry[0], str)):
          raise ValueError(f'ResNet: widths holds (conv path, channels) '
                           f'pairs, got {entry!r}')
        spec.check_int(self, f'widths[{entry[0]!r}]', value=entry[1])

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_images(x)
    base = max(1, int(round(64 * self.width)))
    stem, stages = self._widths(base)
    if self.small_input:
      x = layers.conv(stem, 3, 1, 1, bias=False, name='conv1')(x)
    else:
      x = layers.conv(stem, 7, 2, 3, bias=False, name='conv1')(x)
    x = layers.ReLU(name='relu')(layers.batch_norm(train, 'bn1')(x))
    if not self.small_input:
      x = layers.MaxPool(3, 2, 1, name='maxpool')(x)
    inputs = base  # the default width of the stream a stage reads
    for i, size in enumerate(self.stage_sizes):
      planes, stride = base * 2**i, 1 if i == 0 else 2
      downsample = (None if self.widths is None else
                    stride != 1 or inputs != planes * self.block.expansion)
      x = Stage(self.block, planes, size, stride, self.remat, stages[i],
                downsample, name=f'layer{i + 1}')(x, train)
      inputs = planes * self.block.expansion
    x = layers.GlobalAvgPool(name='avgpool')(x)
    return nn.Dense(self.num_classes, name='fc')(x)

  def _widths(self, base: int):
    """The stem's width and each stage's per-block conv widths (None where
    ``widths`` is None), checked for unknown paths and for disagreeing
    writers of one residual stream."""
    if self.widths is None:
      return base, (None,) * len(self.stage_sizes)
    given = dict(self.widths)
    names = ('conv1', 'conv2') if self.block.expansion == 1 else (
        'conv1', 'conv2', 'conv3')
    used = {'conv1'}
    stream = given.get('conv1', base)
    stages, inputs = [], base
    for i, size in enumerate(self.stage_sizes):
      planes = base * 2**i
      out = planes * self.block.expansion
      blocks = []
      for j in range(size):
        prefix = f'layer{i + 1}.{j}.'
        defaults = (planes,) * (len(names) - 1) + (out,)
        widths = tuple(given.get(prefix + n, d)
                       for n, d in zip(names, defaults))
        used.update(prefix + n for n in names)
        projection = j == 0 and (i > 0 or inputs != out)
        shortcut = prefix + 'downsample.0'
        if projection:
          used.add(shortcut)
          stream = given.get(shortcut, widths[-1])
        if widths[-1] != stream:
          raise ValueError(
              f'widths: {prefix}{names[-1]} has {widths[-1]} channels but '
              f'the residual stream it adds to has {stream} (written by '
              f'{shortcut if projection else "the stage before"}); convs '
              'that write one stream must have the same width')
        blocks.append(widths)
      stages.append(tuple(blocks))
      inputs = out
    unknown = sorted(set(given) - used)
    if unknown:
      raise ValueError(f'widths: no conv(s) {unknown} in this ResNet; its '
                       f'convs are {sorted(used)}')
    return given.get('conv1', base), tuple(stages)



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


_STREAM = ('writes a residual stream whose channel other layers also write '
           '(the stem or projection shortcut and the blocks\' last convs): '
           'a channel goes only when every writer of it is pruned')


def _slim(model: ResNet, edit) -> ResNet:
  """``prune.slim`` of a ResNet (``edit``: ``prune.slim.Edit``): inner
  convs lose their pruned filters; a stream channel goes when its every
  writer is pruned, else the pruned writers stay with zero outputs.
  Streams: the stem's (or a projection shortcut's) output and the blocks'
  sums after it up to the next projection."""
  names = ('conv1', 'conv2') if model.block.expansion == 1 else (
      'conv1', 'conv2', 'conv3')
  streams = [{'writers': ['conv1'], 'readers': []}]
  inner = []  # (conv, the conv before it in its block)
  for i, blocks in enumerate(model.stage_sizes):
    for j in range(blocks):
      prefix = f'layer{i + 1}.{j}.'
      streams[-1]['readers'].append(prefix + names[0])
      shortcut = prefix + 'downsample.0'
      if shortcut in edit.units:
        streams[-1]['readers'].append(shortcut)
        streams.append({'writers': [shortcut], 'readers': []})
      streams[-1]['writers'].append(prefix + names[-1])
      inner += [(prefix + b, prefix + a) for a, b in zip(names, names[1:])]
  streams[-1]['readers'].append('fc')
  kept: dict[str, np.ndarray] = {}
  for stream in streams:
    writers = stream['writers']
    gone = np.logical_and.reduce([edit.mask(w) for w in writers])
    keep, last = edit.nonempty(~gone)
    for w in writers:
      edit.zero_outputs(w, edit.mask(w) & ~gone, _STREAM)
      edit.zero_outputs(w, last, edit.EMPTY)
      edit.count(w, ~keep)
      edit.outputs(w, keep)
      kept[w] = keep
    for r in stream['readers']:
      edit.inputs(r, keep)
  for path in [p for _, p in inner] + [p for p, _ in inner]:
    if path not in kept:
      kept[path] = edit.narrow(path)
  for path, before in inner:
    edit.inputs(path, kept[before])
  if model.widths is None and all(k.all() for k in kept.values()):
    return model
  return model.clone(widths=tuple((p, int(kept[p].sum()))
                                  for p in sorted(kept)))


_R = ResNet
VARIANTS = {
    # torchvision ResNets
    'resnet18': functools.partial(_R, stage_sizes=(2, 2, 2, 2),
                                  block=BasicBlock),
    'resnet34': functools.partial(_R, stage_sizes=(3, 4, 6, 3),
                                  block=BasicBlock),
    'resnet50': functools.partial(_R, stage_sizes=(3, 4, 6, 3),
                                  block=Bottleneck),
    # 32x32 inputs: 3x3 stem, no max-pool, a quarter of the width
    'resnet18_small': functools.partial(_R, stage_sizes=(2, 2, 2, 2),
                                        block=BasicBlock, small_input=True,
                                        width=0.25),
    'resnet_tiny': functools.partial(_R, stage_sizes=(1, 1, 1, 1),
                                     block=BasicBlock, small_input=True,
                                     width=0.125),
}

SPEC = spec.register(spec.Spec(
    'resnet', ResNet, variants=VARIANTS, transformer=False, units='filters',
    pruning_preset='pxp_groups', heatmap_preset='epsilon_gamma_box',
    classifier='fc', layer_groups=_layer_groups, slim=_slim,
    checkpoint_names={'torchvision': spec.same_names},
    exports=('torchvision',)))
