"""VGG-11/13/16, with or without BatchNorm, with torchvision's module names.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015. ``features.K`` numbers every layer of the feature
stack as torchvision's ``nn.Sequential`` does (conv, [BatchNorm], ReLU,
max-pool), ``classifier.0/3/6`` are the dense layers (dropout, an identity at
evaluation, is left out but keeps its index).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import numpy as np

from pxp_jax.models import layers, spec
from pxp_jax.models.kinds import Kind

# Feature-stack widths; 'M' is a 2x2 max-pool (torchvision's cfgs A, B, D).
CONFIGS = {
    'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    'vgg13': (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512,
              512, 'M'),
    'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
              'M', 512, 512, 512, 'M'),
}


class Features(nn.Module):
  """The convolutional stack, layers named by their torchvision index;
  ``remat``: each stage (its convs up to and with its max-pool) under
  ``nn.remat``, the layers keeping their names."""

  config: Sequence[int | str]
  batch_norm: bool
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    # (module, x, widths, start, batch_norm, train): all but x are static
    run = (nn.remat(_stage, static_argnums=(2, 3, 4, 5)) if self.remat
           else _stage)
    start = 0
    for widths in _stages(tuple(self.config)):
      x = run(self, x, widths, start, self.batch_norm, train)
      start += sum(1 if v == 'M' else 3 if self.batch_norm else 2
                   for v in widths)
    return x


def _stages(config: tuple) -> list[tuple]:
  """``config`` cut after each max-pool (VGG's blocks)."""
  stages = [[]]
  for v in config:
    stages[-1].append(v)
    if v == 'M':
      stages.append([])
  return [tuple(s) for s in stages if s]


def _stage(module, x, widths, start: int, batch_norm: bool, train: bool):
  """The layers ``widths`` of ``module``'s stack (conv, [BatchNorm,] ReLU
  per width, a max-pool for 'M'), numbered from ``start``."""
  del module  # the parent of the layers made here
  index = start
  for v in widths:
    if v == 'M':
      x = layers.MaxPool(2, 2, name=str(index))(x)
      index += 1
      continue
    x = layers.conv(v, 3, 1, 1, name=str(index))(x)
    index += 1
    if batch_norm:
      x = layers.batch_norm(train, str(index))(x)
      index += 1
    x = layers.ReLU(name=str(index))(x)
    index += 1
  return x


class Classifier(nn.Module):
  """``0`` dense, ``1`` ReLU, ``3`` dense, ``4`` ReLU, ``6`` dense;
  ``hidden``: the width of ``0`` and ``3``, or a pair of widths."""

  hidden: int | tuple[int, int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, name=name, kernel_init=nn.initializers.normal(0.01))
    first, second = hidden_widths(self.hidden)
    x = layers.ReLU(name='1')(dense(first, '0')(x))
    x = layers.ReLU(name='4')(dense(second, '3')(x))
    return dense(self.num_classes, '6')(x)


def hidden_widths(hidden) -> tuple[int, int]:
  """The widths of ``classifier.0`` and ``classifier.3``."""
  if isinstance(hidden, int):
    return hidden, hidden
  if len(hidden) != 2:
    raise ValueError(f'hidden is one width or a pair of widths (classifier.0, '
                     f'classifier.3); got {hidden}')
  return int(hidden[0]), int(hidden[1])


class VGG(nn.Module):
  """torchvision's VGG on NHWC inputs; returns logits.

  Attributes:
    config: widths of the conv layers and 'M' for max-pools (``CONFIGS``).
    batch_norm: BatchNorm after every conv (the ``_bn`` variants).
    num_classes: outputs of ``classifier.6``.
    hidden: width of the two hidden dense layers (4096 in torchvision), or
      a pair of widths (a slimmed model, ``pxp_jax.prune.slim``; so are conv
      widths in ``config`` narrower than the family's).
    pool_size: output of the adaptive average pool (7x7 in torchvision).
    remat: recompute each conv stage's activations in the backward pass
      (``nn.remat`` per stage): less memory for gradients and relevance at
      the cost of a second forward pass; the same parameters, paths and
      values.
  """

  config: Sequence[int | str] = CONFIGS['vgg16']
  batch_norm: bool = False
  num_classes: int = 1000
  hidden: int | tuple[int, int] = 4096
  pool_size: tuple[int, int] = (7, 7)
  remat: bool = False

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.config, (tuple, list)):
      raise ValueError(f'VGG: config must be a tuple of conv widths and '
                       f'\'M\' (max-pool), got {self.config!r}')
    for v in self.config:
      if v != 'M':
        spec.check_int(self, 'config entry', value=v)
    if not any(v != 'M' for v in self.config):
      raise ValueError(f'VGG: config must hold at least one conv width, got '
                       f'{self.config!r}')
    if isinstance(self.hidden, (tuple, list)):
      spec.check_sizes(self, 'hidden', length=2)
    else:
      spec.check_int(self, 'hidden')
    spec.check_sizes(self, 'pool_size', length=2)
    spec.check_int(self, 'num_classes')
    spec.check_bool(self, 'batch_norm', 'remat')

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers.check_images(x)
    pools = sum(v == 'M' for v in self.config)
    if min(x.shape[1:3]) < 2**pools:
      raise ValueError(f'VGG: {pools} max-pools need images of at least '
                       f'{2**pools}x{2**pools}, got {tuple(x.shape[1:3])}')
    x = Features(tuple(self.config), self.batch_norm, self.remat,
                 name='features')(x, train)
    x = layers.AdaptiveAvgPool(tuple(self.pool_size), name='avgpool')(x)
    x = layers.Flatten(name='flatten')(x)
    hidden = (self.hidden if isinstance(self.hidden, int)
              else tuple(self.hidden))
    return Classifier(hidden, self.num_classes, name='classifier')(x)


def _layer_groups(found, boundaries) -> dict[str, list[str]]:
  """PXP's groups for a VGG as the reference's composites (Hatefi et al.,
  2024): the convs of the first two blocks (between max-pools) low, the
  third block and the first two convs of the fourth middle, the rest high
  (VGG-16: conv1_1-conv2_2 / conv3_1-conv4_2 / conv4_3-conv5_3, 4/5/4);
  the classifier's dense layers ``fc``. ``boundaries``: a cut of the convs
  in call order instead."""
  if boundaries is not None:
    return spec.groups_by_order(found, boundaries)
  blocks: list[list[str]] = [[]]
  for op in found.leaves:
    if op.kind is Kind.MAX_POOL and blocks[-1]:
      blocks.append([])
    elif op.kind is Kind.CONV:
      blocks[-1].append(op.path)
  blocks = [b for b in blocks if b]
  low = [p for b in blocks[:2] for p in b]
  middle = [p for b in blocks[2:3] for p in b] + [
      p for b in blocks[3:4] for p in b[:2]]
  high = [p for b in blocks[3:] for p in b if p not in middle]
  return {'low': low, 'middle': middle, 'high': high,
          'fc': [op.path for op in found.of_kind(Kind.DENSE)]}


def _slim(model: VGG, edit) -> VGG:
  """``prune.slim`` of a VGG (``edit``: ``prune.slim.Edit``): every conv
  filter and hidden neuron goes: a conv's next conv loses the input
  channels; the last conv's, ``classifier.0`` loses the rows of the
  channels in the flattened (channel-major) pool output."""
  convs = [op.path for op in edit.found.of_kind(Kind.CONV)]
  config, widths = [], iter(convs)
  before = None
  for v in model.config:
    if v == 'M':
      config.append(v)
      continue
    path = next(widths)
    keep = edit.narrow(path)
    if before is not None:
      edit.inputs(path, before)
    before = keep
    config.append(int(keep.sum()))
  pool = int(np.prod(model.pool_size))
  edit.inputs('classifier.0', np.repeat(before, pool))
  hidden = []
  for layer, reader in (('classifier.0', 'classifier.3'),
                        ('classifier.3', 'classifier.6')):
    keep = edit.narrow(layer)
    edit.inputs(reader, keep)
    hidden.append(int(keep.sum()))
  new = dict(config=tuple(config))
  if tuple(hidden) != hidden_widths(model.hidden):
    new['hidden'] = tuple(hidden)
  return model.clone(**new)


VARIANTS = {
    # torchvision VGGs
    **{f'{name}{suffix}': functools.partial(VGG, config=cfg,
                                            batch_norm=bool(suffix))
       for name, cfg in CONFIGS.items() for suffix in ('', '_bn')},
    'vgg_tiny': functools.partial(VGG, config=(8, 'M', 16, 'M', 16, 'M'),
                                  batch_norm=True, hidden=32, pool_size=(2, 2)),
}

SPEC = spec.register(spec.Spec(
    'vgg', VGG, variants=VARIANTS, transformer=False, units='filters',
    pruning_preset='pxp_groups', heatmap_preset='epsilon_gamma_box',
    classifier='classifier.6', layer_groups=_layer_groups, slim=_slim,
    checkpoint_names={'torchvision': spec.same_names},
    exports=('torchvision',)))
