"""torchvision and timm checkpoints: torch layout, module names as ours.

Our flax paths equal timm's module names (``layer1.0.conv1``,
``blocks.3.attn.qkv``), so a timm or torchvision ResNet/VGG checkpoint maps
one to one after the layout change; torchvision's ViT names are mapped to
timm's first. ViT sizes come from the constructor name's table, then the
checkpoint's own shapes, then the caller's overrides; other timm families
(ConvNeXt) are registered models whose spec reads timm's names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from pxp_jax import models
from pxp_jax.convert.assemble import Plan, assemble, expected
from pxp_jax.convert.reading import read_checkpoint
from pxp_jax.models import spec as spec_lib, vit

# flax (collection, leaf) -> torch parameter or buffer name
_TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
               ('params', 'bias'): 'bias',
               ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}


def _torch_plan(rename: Callable[[str], str] = lambda name: name,
                shapes=None) -> Plan:
  """Our paths equal torch module names (``layer1.0.conv1``, ``blocks.3.attn.
  qkv``); ``rename`` maps such a timm-style name to another family's.
  Parameters other than kernels, biases and norms keep their name
  (``cls_token``, a ConvNeXt block's layer scale ``gamma``). ``shapes``
  (``assemble.expected``): a 1x1 conv weight read into a dense kernel
  (timm's ConvNeXt MLPs as convs) is squeezed."""

  def plan(path):
    collection, *modules, leaf = path
    name = '.'.join([*modules, _TORCH_LEAF.get((collection, leaf), leaf)])
    if leaf != 'kernel':
      return (rename(name),), np.asarray
    dense = shapes is not None and len(shapes[path].shape) == 2
    return (rename(name),), lambda w: _torch_layout(w, dense)
  return plan


def _torch_layout(w, dense: bool = False):
  """A torch conv ``(O, I, kh, kw)`` or linear ``(O, I)`` weight in flax's
  ``(kh, kw, I, O)`` or ``(I, O)`` layout; ``dense``: into a dense kernel,
  a 1x1 conv's ``(O, I, 1, 1)`` as a linear weight."""
  if dense and w.ndim == 4 and w.shape[2:] == (1, 1):
    w = w[:, :, 0, 0]
  return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T


def _ignore_torch(name: str) -> bool:
  """Whether a checkpoint name may be left unused (BatchNorm's counter)."""
  return name.endswith('num_batches_tracked')  # a counter, not a weight


# torchvision's constructors: (patch_size, depth, num_heads, width, mlp_dim)
_TORCHVISION_VITS = {
    'vit_b_16': (16, 12, 12, 768, 3072), 'vit_b_32': (32, 12, 12, 768, 3072),
    'vit_l_16': (16, 24, 16, 1024, 4096), 'vit_l_32': (32, 24, 16, 1024, 4096),
    'vit_h_14': (14, 32, 16, 1280, 5120),
}
# timm's vit_{size}_patch{P}_{S}: (width, depth, num_heads); mlp_dim = 4 width
_TIMM_SIZES = {'tiny': (192, 12, 3), 'small': (384, 12, 6),
               'base': (768, 12, 12), 'large': (1024, 24, 16),
               'huge': (1280, 32, 16)}
_TIMM_NAME = re.compile(r'^vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)'
                        r'(\.\w+)?$')
_VIT_ALIASES = {'num_layers': 'depth', 'hidden_dim': 'width'}  # torchvision's


def _vit_from_torch(arrays, sizes, overrides, name_of) -> vit.ViT:
  """A ViT from table ``sizes`` (may be empty), the checkpoint's own shapes
  for whatever the table leaves open, and ``overrides`` over both."""
  overrides = {_VIT_ALIASES.get(k, k): v for k, v in overrides.items()}
  fields = set(vit.ViT.__dataclass_fields__) - {'parent', 'name'}
  unknown = set(overrides) - fields
  if unknown:
    raise TypeError(f'ViT has no attribute(s) {sorted(unknown)}; it takes '
                    f'{sorted(fields)}')
  found = {}
  for key, name, axis in (('width', 'patch_embed.proj.weight', 0),
                          ('patch_size', 'patch_embed.proj.weight', -1),
                          ('mlp_dim', 'blocks.0.mlp.fc1.weight', 0),
                          ('num_classes', 'head.weight', 0),
                          ('image_size', 'pos_embed', -2)):
    if name_of(name) in arrays:
      found[key] = arrays[name_of(name)].shape[axis]
  if 'image_size' in found and 'patch_size' in found:  # from the positions
    found['image_size'] = math.isqrt(found['image_size'] - 1) * \
        found['patch_size']
  else:
    found.pop('image_size', None)
  depth = 0
  while name_of(f'blocks.{depth}.norm1.weight') in arrays:
    depth += 1
  if depth:
    found['depth'] = depth
  config = {**found, **sizes, **overrides}
  if 'num_heads' not in config:
    raise ValueError('num_heads cannot be read from a fused qkv weight; pass '
                     'it, e.g. num_heads=12')
  return vit.ViT(**config)


def _torch_layout_names() -> list[str]:
  """Registered models whose family spec reads torchvision's names as ours
  (ResNets, VGGs)."""
  return [n for n in models.names()
          if models.spec_for(models.create(n)).checkpoint_names.get(
              'torchvision') is spec_lib.same_names]


def from_torchvision(name: str, state_dict, **overrides):
  """Converts a torchvision ResNet, VGG or ViT checkpoint.

  Args:
    name: a torchvision constructor name: ``resnet18``, ``resnet34``,
      ``resnet50``, ``vgg11``, ``vgg13``, ``vgg16`` (and ``_bn``),
      ``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``;
      ``'vit'`` for any ``VisionTransformer`` (sizes read from the weights,
      ``num_heads`` given); or another ResNet/VGG of ``models.names()``.
    state_dict: the model's ``state_dict()`` or a checkpoint file (see
      ``read_checkpoint``).
    **overrides: model attributes. For ViTs: ``image_size, patch_size, depth,
      num_heads, width, mlp_dim, num_classes`` (torchvision's ``num_layers``
      and ``hidden_dim`` are accepted for ``depth`` and ``width``). Unset
      ``num_classes`` and a ViT's ``image_size`` are read from the weights.

  Returns:
    ``(model, variables)``; ``model.apply(variables, x)`` on NHWC images
    gives the torch model's logits.

  Raises:
    CheckpointMismatchError: names missing, unexpected and misshapen arrays.

  Example::

    tv = torchvision.models.resnet50(weights='IMAGENET1K_V2').eval()
    model, variables = convert.from_torchvision('resnet50', tv.state_dict())
    logits = model.apply(variables, images_nhwc)
  """
  arrays = read_checkpoint(state_dict)
  if name == 'vit' or name in _TORCHVISION_VITS:
    sizes = {}
    if name != 'vit':
      sizes = dict(zip(('patch_size', 'depth', 'num_heads', 'width', 'mlp_dim'),
                       _TORCHVISION_VITS[name]))
    # older torchvision named the MLP layers linear_1 and linear_2
    arrays = {re.sub(r'\.mlp\.linear_(\d)\.',
                     lambda m: f'.mlp.{3 * (int(m[1]) - 1)}.', k): v
              for k, v in arrays.items()}
    model = _vit_from_torch(arrays, sizes, overrides, vit.SPEC.checkpoint_names["torchvision"])
    plan = _torch_plan(vit.SPEC.checkpoint_names["torchvision"])
  elif name in _torch_layout_names():
    spec = models.spec_for(models.create(name))
    head = f'{spec.classifier}.weight'
    if 'num_classes' not in overrides and head in arrays:
      overrides = {**overrides, 'num_classes': arrays[head].shape[0]}
    model, plan = models.create(name, **overrides), _torch_plan()
  else:
    known = sorted({*_TORCHVISION_VITS, 'vit', *_torch_layout_names()})
    raise ValueError(f'unknown torchvision model {name!r}; known: '
                     f'{", ".join(known)}')
  return model, assemble(model, arrays, plan, _ignore_torch)


def _timm_names() -> list[str]:
  """Registered models whose family spec reads timm's names (ConvNeXts,
  and ViTs by our names)."""
  return [n for n in models.names()
          if 'timm' in models.spec_for(models.create(n)).checkpoint_names]


def from_timm(name: str, state_dict, **overrides):
  """Converts a timm Vision Transformer or ConvNeXt checkpoint (timm's names
  are ours).

  Args:
    name: ``vit_{tiny,small,base,large,huge}_patch{P}_{S}``, optionally with
      a pretrained tag (``vit_base_patch16_224.augreg_in21k``), or ``'vit'``
      for any plain timm ViT (sizes read from the weights, ``num_heads``
      given); or a registered model whose family spec reads timm's names,
      with or without a pretrained tag: ``convnext_atto``, ``convnext_tiny``
      (``convnext_tiny.fb_in1k``), ``convnext_tiny_test``, ``vit_b16``.
    state_dict: ``model.state_dict()`` or a checkpoint file.
    **overrides: ViTs: ``image_size, patch_size, depth, num_heads, width,
      mlp_dim, num_classes`` (the last read from ``head`` when unset);
      others: any model attribute (``num_classes`` read from the
      classifier when unset).

  Returns:
    ``(model, variables)`` with timm's logits.

  Raises:
    CheckpointMismatchError: names missing, unexpected and misshapen arrays
      (e.g. a ``fc_norm`` of a global-pool ViT, which ours does not have).
  """
  base = name.split('.')[0]
  if base in _timm_names():
    arrays = read_checkpoint(state_dict)
    spec = models.spec_for(models.create(base))
    rename = spec.checkpoint_names['timm']
    head = rename(f'{spec.classifier}.weight')
    if 'num_classes' not in overrides and head in arrays:
      overrides = {**overrides, 'num_classes': arrays[head].shape[0]}
    model = models.create(base, **overrides)
    return model, assemble(model, arrays,
                           _torch_plan(rename, expected(model)), _ignore_torch)
  if name == 'vit':
    sizes = {}
  elif m := _TIMM_NAME.match(name):
    width, depth, heads = _TIMM_SIZES[m[1]]
    sizes = dict(width=width, depth=depth, num_heads=heads, mlp_dim=4 * width,
                 patch_size=int(m[2]), image_size=int(m[3]))
  else:
    raise ValueError(f'unknown timm model {name!r}; expected "vit", '
                     'vit_{tiny,small,base,large,huge}_patch{P}_{S}, e.g. '
                     'vit_base_patch16_224, or one of '
                     f'{", ".join(_timm_names())}')
  arrays = read_checkpoint(state_dict)
  model = _vit_from_torch(arrays, sizes, overrides, lambda n: n)
  return model, assemble(model, arrays, _torch_plan(), _ignore_torch)
