"""ConvNeXt, the same network as timm's ``convnext_atto`` ... ``convnext_tiny``.

Liu et al., "A ConvNet for the 2020s", CVPR 2022: a 4x4 stride-4 patch stem
and a LayerNorm over channels; four stages, each but the first entered
through a LayerNorm and a 2x2 stride-2 conv; blocks of a depthwise 7x7 conv,
a LayerNorm over channels, an MLP (``fc1`` 4x wide, GELU, ``fc2``) over the
channels of each position, a layer scale ``gamma`` and a residual sum
(timm's drop path is the identity at evaluation); a head of global average
pooling, a LayerNorm and ``fc``. Module paths are timm's state-dict names
(``stem.0``, ``stages.1.downsample.1``, ``stages.2.blocks.3.conv_dw``,
``.norm``, ``.mlp.fc1``, ``.gamma``, ``head.norm``, ``head.fc``), so a timm
checkpoint loads name for name (``convert.from_timm``).

LRP (the spec's ``rules``, which every composite gets for the kinds it
leaves open): LayerNorm takes AttnLRP's rule (Achtibat et al., 2024, Prop.
3.4), Epsilon on the layer with ``1/std`` held constant, so the
normalisation passes relevance as a linear map instead of absorbing it; GELU
the identity rule ``R_x = R_y`` (Prop. 3.2); the layer scale, a fixed
per-channel factor, its plain gradient, which in the gradient x input
convention is ``R_x = R_y`` (zennit's Pass); the depthwise, stem and
downsampling convs the composite's conv rule, the MLP's dense layers its
dense rule, the residual sum Norm. Units: every conv's filters (stem,
downsampling, depthwise) and the MLP layers' neurons (``fc1``'s hidden
units, ``fc2``'s outputs); the pruning job prunes neurons, and ``prune.slim``
removes ``fc1``'s physically (its column and ``fc2``'s row); every other
unit writes channels that a LayerNorm normalises together and stays zeroed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import numpy as np

from pxp_jax.models import layers, spec
from pxp_jax.models.kinds import Kind

_INIT = nn.initializers.truncated_normal(0.02)  # timm's


def _dense(features: int, name: str, empty: bool = False) -> nn.Dense:
  """``empty``: an MLP layer whose hidden units are all pruned (a slimmed
  model's), whose zero-size kernel cannot be drawn."""
  return nn.Dense(features, name=name,
                  kernel_init=nn.initializers.zeros if empty else _INIT)


class Mlp(nn.Module):
  """``fc1`` -> GELU (``act``) -> ``fc2`` over the channels of each
  position (timm's ``Mlp``; a 1x1 conv pair in its ``conv_mlp`` layout)."""

  hidden: int

  @nn.compact
  def __call__(self, x):
    empty = not self.hidden
    y = layers.GELU(name='act')(_dense(self.hidden, 'fc1', empty)(x))
    return _dense(x.shape[-1], 'fc2', empty)(y)


class Block(nn.Module):
  """``x + gamma * mlp(norm(conv_dw(x)))``; ``hidden``: the MLP's width."""

  hidden: int
  kernel_size: int = 7
  ln_eps: float = 1e-6
  ls_init: float = 1e-6

  @nn.compact
  def __call__(self, x):
    width, k = x.shape[-1], self.kernel_size
    y = layers.Conv(width, (k, k), padding=((k // 2, k // 2),) * 2,
                    feature_group_count=width, kernel_init=_INIT,
                    name='conv_dw')(x)
    y = nn.LayerNorm(self.ln_eps, name='norm')(y)
    y = Mlp(self.hidden, name='mlp')(y)
    gamma = self.param('gamma', nn.initializers.constant(self.ls_init),
                       (width,))
    y = layers.LayerScale(name='layer_scale')(y, gamma)
    return layers.Sum(name='residual')(y, x)


class Downsample(nn.Module):
  """``0`` a LayerNorm over channels, ``1`` a 2x2 stride-2 conv."""

  features: int
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm(self.ln_eps, name='0')(x)
    return layers.Conv(self.features, (2, 2), (2, 2), padding='VALID',
                       kernel_init=_INIT, name='1')(x)


class Stage(nn.Module):
  """``stages.K``: a ``downsample`` (but in the first stage), then
  ``blocks.0 ..``, each under ``nn.remat`` with ``remat``."""

  width: int
  hidden: tuple[int, ...]
  downsample: bool
  kernel_size: int
  ln_eps: float
  ls_init: float
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    if self.downsample:
      x = Downsample(self.width, self.ln_eps, name='downsample')(x)
    x = _Blocks(self.hidden, self.kernel_size, self.ln_eps, self.ls_init,
                self.remat, name='blocks')(x)
    return x


class _Blocks(nn.Module):
  hidden: tuple[int, ...]
  kernel_size: int
  ln_eps: float
  ls_init: float
  remat: bool

  @nn.compact
  def __call__(self, x):
    block = nn.remat(Block) if self.remat else Block
    for i, hidden in enumerate(self.hidden):
      x = block(hidden, self.kernel_size, self.ln_eps, self.ls_init,
                name=str(i))(x)
    return x


class _Stem(nn.Module):
  """``0`` a patch_size-strided conv, ``1`` a LayerNorm over channels."""

  width: int
  patch_size: int
  ln_eps: float

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = layers.Conv(self.width, (p, p), (p, p), padding='VALID',
                    kernel_init=_INIT, name='0')(x)
    return nn.LayerNorm(self.ln_eps, name='1')(x)


class _Stages(nn.Module):
  """``stages.0 ..``; ``hidden``: every block's MLP width in call order."""

  depths: tuple[int, ...]
  dims: tuple[int, ...]
  hidden: tuple[int, ...]
  kernel_size: int
  ln_eps: float
  ls_init: float
  remat: bool

  @nn.compact
  def __call__(self, x):
    hidden = iter(self.hidden)
    for i, (depth, width) in enumerate(zip(self.depths, self.dims)):
      x = Stage(width, tuple(next(hidden) for _ in range(depth)), i > 0,
                self.kernel_size, self.ln_eps, self.ls_init, self.remat,
                name=str(i))(x)
    return x


class _Head(nn.Module):
  """``global_pool`` (mean over space), ``norm``, ``fc``."""

  num_classes: int
  ln_eps: float

  @nn.compact
  def __call__(self, x):
    x = layers.GlobalAvgPool(name='global_pool')(x)
    x = nn.LayerNorm(self.ln_eps, name='norm')(x)
    return _dense(self.num_classes, 'fc')(x)


class ConvNeXt(nn.Module):
  """timm's ConvNeXt on NHWC inputs; returns logits.

  Attributes:
    depths: blocks per stage, e.g. (3, 3, 9, 3) for ConvNeXt-T.
    dims: channels per stage, e.g. (96, 192, 384, 768).
    num_classes: outputs of ``head.fc``.
    mlp_ratio: the MLPs' width over their stage's (4).
    kernel_size: side of the depthwise convs (7).
    patch_size: side and stride of the stem conv (4).
    ln_eps: the LayerNorms' epsilon (1e-6, as timm's).
    ls_init: the layer scales' initial value (1e-6, as timm's).
    conv_mlp: timm's layout of the MLP weights in checkpoints: 1x1 convs
      (True: ``convnext_atto`` .. ``_nano``) or linear layers; the network
      is the same (``convert`` reads and writes either).
    remat: recompute each block's activations in the backward pass
      (``nn.remat`` per block): less memory for gradients and relevance at
      the cost of a second forward pass; the same parameters, paths and
      values.
    block_mlp_dims: the MLP width of every block in call order (None:
      ``mlp_ratio`` times its stage's width): a slimmed model
      (``pxp_jax.prune.slim``).
  """

  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  num_classes: int = 1000
  mlp_ratio: int = 4
  kernel_size: int = 7
  patch_size: int = 4
  ln_eps: float = 1e-6
  ls_init: float = 1e-6
  conv_mlp: bool = False
  remat: bool = False
  block_mlp_dims: tuple[int, ...] | None = None

  def __post_init__(self):
    super().__post_init__()
    spec.check_sizes(self, 'depths')
    if not self.depths:
      raise ValueError('ConvNeXt: depths must name at least one stage, e.g. '
                       '(3, 3, 9, 3) for ConvNeXt-T')
    spec.check_sizes(self, 'dims', length=len(self.depths))
    for name in ('num_classes', 'mlp_ratio', 'kernel_size', 'patch_size'):
      spec.check_int(self, name)
    if self.kernel_size % 2 == 0:
      raise ValueError(f'ConvNeXt: kernel_size must be odd (same padding), '
                       f'got {self.kernel_size}')
    for name in ('ln_eps', 'ls_init'):
      value = getattr(self, name)
      if (isinstance(value, bool)
          or not isinstance(value, (int, float, np.number))
          or not np.isfinite(value) or value < 0):
        raise ValueError(f'ConvNeXt: {name} must be a finite number >= 0, '
                         f'got {value!r}')
    spec.check_bool(self, 'conv_mlp', 'remat')
    if self.block_mlp_dims is not None:  # 0: a block's MLP pruned whole
      spec.check_sizes(self, 'block_mlp_dims', 0, sum(self.depths))

  def mlp_widths(self) -> tuple[int, ...]:
    """Every block's MLP width, in call order."""
    if self.block_mlp_dims is not None:
      return tuple(self.block_mlp_dims)
    return tuple(self.mlp_ratio * w for d, w in zip(self.depths, self.dims)
                 for _ in range(d))

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout and no BatchNorm: the same network either way
    layers.check_images(x)
    smallest = self.patch_size * 2**(len(self.depths) - 1)
    if min(x.shape[1:3]) < smallest:
      raise ValueError(f'ConvNeXt: a stem of stride {self.patch_size} and '
                       f'{len(self.depths) - 1} downsamplings need images of '
                       f'at least {smallest}x{smallest}, got '
                       f'{tuple(x.shape[1:3])}')
    x = _Stem(self.dims[0], self.patch_size, self.ln_eps, name='stem')(x)
    x = _Stages(tuple(self.depths), tuple(self.dims), self.mlp_widths(),
                self.kernel_size, self.ln_eps, self.ls_init, self.remat,
                name='stages')(x)
    return _Head(self.num_classes, self.ln_eps, name='head')(x)


def _layer_groups(found, boundaries) -> dict[str, list[str]]:
  """PXP's groups for a ConvNeXt by stage, as a ResNet's: the stem and
  stage 0 low, the stages between middle, the last stage high (each
  stage's downsampling conv with it; every conv and MLP layer), ``head.fc``
  ``fc``. ``boundaries``: the same layers cut in call order instead."""
  output = found.output_layer
  linear = [op.path for op in found.of_kind(Kind.CONV, Kind.DENSE)
            if op.path != output]
  if boundaries is not None:
    return {**spec.split_by_order(linear, boundaries), 'fc': [output]}
  stages: dict[int, list[str]] = {}
  for path in linear:
    match = re.match(r'stages\.(\d+)\.', path)
    stages.setdefault(int(match[1]) if match else 0, []).append(path)
  ordered = [stages[k] for k in sorted(stages)]
  return {**spec.split_by_stage(ordered, 1, max(1, len(ordered) - 1)),
          'fc': [output]}


_NORMALISED = ('a depthwise filter: its channel is normalised together with '
               'the others by the LayerNorm after it')
_STREAM = ('writes the residual stream, which every block adds to and '
           'LayerNorms read whole')


def _slim(model: ConvNeXt, edit) -> ConvNeXt:
  """``prune.slim`` of a ConvNeXt (``edit``: ``prune.slim.Edit``): ``fc1``
  neurons lose their column and bias and their row of ``fc2``; every other
  unit stays, zeroed."""
  hidden = []
  for op in edit.found.of_kind(Kind.DENSE):
    if op.path.endswith('.mlp.fc1'):
      gone = edit.mask(op.path)
      edit.remove(op.path, gone)
      hidden.append(int((~gone).sum()))
  for key, unit in edit.units.items():
    if (key in edit.pruned and unit.type != 'output'
        and key not in edit.handled):
      edit.zero_outputs(key, edit.mask(key), _NORMALISED
                        if key.endswith('.conv_dw') else _STREAM)
  if model.block_mlp_dims is None and tuple(hidden) == model.mlp_widths():
    return model
  return model.clone(block_mlp_dims=tuple(hidden))


_MLP_WEIGHT = re.compile(r'\.mlp\.fc[12]\.weight$')


def _torch_layout(model: ConvNeXt, name: str, value: np.ndarray):
  """timm's ``conv_mlp`` layout: the MLP's weights as 1x1 convs."""
  if model.conv_mlp and _MLP_WEIGHT.search(name) and value.ndim == 2:
    return value[:, :, None, None]
  return value


_C = ConvNeXt
VARIANTS = {
    # timm's convnext_atto and convnext_tiny
    'convnext_atto': functools.partial(_C, depths=(2, 2, 6, 2),
                                       dims=(40, 80, 160, 320),
                                       conv_mlp=True),
    'convnext_tiny': functools.partial(_C, depths=(3, 3, 9, 3),
                                       dims=(96, 192, 384, 768)),
    # 32x32 inputs, a few narrow blocks
    'convnext_tiny_test': functools.partial(_C, depths=(1, 1, 2, 1),
                                            dims=(8, 16, 16, 24)),
}

SPEC = spec.register(spec.Spec(
    'convnext', ConvNeXt, variants=VARIANTS, transformer=False,
    units='neurons', pruning_preset='pxp_groups',
    heatmap_preset='epsilon_gamma_box',
    rules={Kind.LAYER_NORM: {'rule': 'layer_norm_identity', 'eps': 1e-6},
           Kind.GELU: {'rule': 'identity', 'eps': 1e-6},
           Kind.SCALE: {'rule': 'gradient'}},
    layer_groups=_layer_groups, unit_params=spec.mlp_params, slim=_slim,
    classifier='head.fc', checkpoint_names={'timm': spec.same_names},
    exports=('timm',), torch_layout=_torch_layout))
