"""Pretrained weights from torchvision, timm and big_vision, as flax variables.

Each ``from_*`` function builds the matching model and returns
``(model, variables)``. They share one mechanism: the expected names and
shapes come from ``jax.eval_shape(model.init, ...)``; a per-family *plan*
says, for every expected array, which checkpoint arrays it is made of and how
their layout changes (torch conv ``(O, I, kh, kw)`` -> flax ``(kh, kw, I, O)``,
linear ``(O, I)`` -> ``(I, O)``, big_vision's per-head query/key/value ->
one fused ``qkv``). Loading is loud: anything missing, left over or of the
wrong shape raises one ``CheckpointMismatchError`` that names every such array
in the checkpoint's own names.

A checkpoint is a mapping of names to numpy or torch arrays, or a file:
``.safetensors`` and ``.npz`` are read without torch; ``.pth``, ``.pt``,
``.bin`` and ``.ckpt`` need torch (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from pxp_jax import models
from pxp_jax.models import vit

Path = tuple[str, ...]
# expected flax path -> (checkpoint names, function of those arrays -> array)
Plan = Callable[[Path], tuple[tuple[str, ...], Callable[..., Any]]]


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model; ``missing``, ``unexpected`` and
  ``mismatched`` hold the offending checkpoint names (and shapes)."""

  def __init__(self, model: str, missing, unexpected, mismatched):
    self.missing, self.unexpected = list(missing), list(unexpected)
    self.mismatched = list(mismatched)
    lines = [f'checkpoint does not match {model}:']
    for title, items in (('missing', self.missing),
                         ('unexpected', self.unexpected),
                         ('shape mismatch', self.mismatched)):
      if items:
        lines.append(f'  {title} ({len(items)}):')
        lines += [f'    {item}' for item in items[:50]]
        if len(items) > 50:
          lines.append(f'    ... and {len(items) - 50} more')
    super().__init__('\n'.join(lines))


# ----------------------------------------------------------------- reading


def read_checkpoint(source) -> dict[str, np.ndarray]:
  """Reads a checkpoint into a flat ``{name: numpy array}`` dict.

  Args:
    source: a mapping of names to numpy or torch arrays (nested mappings are
      joined with ``/``, as flax trees and big_vision names are), or the path
      of a ``.safetensors``, ``.npz``, ``.pth``, ``.pt``, ``.bin`` or ``.ckpt``
      file.

  Returns:
    ``{name: np.ndarray}`` with the usual wrappers removed: a
    ``{'state_dict': ...}`` or ``{'model': ...}`` envelope and the ``module.``
    and ``_orig_mod.`` prefixes of ``DataParallel`` and ``torch.compile``.
  """
  # safetensors and torch are optional: imported only for their formats
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file
      source = load_file(path)
    elif path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as f:
        source = dict(f)
    elif path.endswith(('.pth', '.pt', '.bin', '.ckpt')):
      try:
        import torch
      except ImportError as e:
        raise ImportError(f'reading {path} needs torch; install it, or save '
                          'the weights as .safetensors or .npz') from e
      source = torch.load(path, map_location='cpu', weights_only=True)
    else:
      raise ValueError(f'unknown checkpoint format {path!r}; expected '
                       '.safetensors, .npz, .pth, .pt, .bin or .ckpt')
  if not isinstance(source, Mapping):
    raise TypeError(f'expected a mapping of names to arrays or a file path, '
                    f'got {type(source).__name__}')
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(source.get(wrapper), Mapping):
      source = source[wrapper]
      break
  flat = {}
  for key, value in traverse_util.flatten_dict(
      dict(source), is_leaf=lambda _, v: not isinstance(v, Mapping)).items():
    flat['/'.join(map(str, key))] = _to_numpy(value)
  # DataParallel's and torch.compile's wrappers prefix every name
  for wrapper in ('module.', '_orig_mod.'):
    if flat and all(k.startswith(wrapper) for k in flat):
      flat = {k[len(wrapper):]: v for k, v in flat.items()}
  return flat


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor; bfloat16 has no numpy twin
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)


# ---------------------------------------------------- the shared mechanism


def _expected(model: nn.Module) -> dict[Path, jax.ShapeDtypeStruct]:
  size = getattr(model, 'image_size', 224)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return traverse_util.flatten_dict(dict(shapes))


def _assemble(model: nn.Module, arrays: Mapping[str, np.ndarray], plan: Plan,
              ignore: Callable[[str], bool] = lambda name: False) -> dict:
  """Fills every variable of ``model`` through ``plan``, or raises one
  CheckpointMismatchError that lists everything that went wrong."""
  filled, used, missing, mismatched = {}, set(), {}, []
  for path, want in _expected(model).items():
    names, fn = plan(path)
    absent = [n for n in names if n not in arrays]
    missing.update(dict.fromkeys(absent))
    if absent:
      continue
    used.update(names)
    sources = ', '.join(f'{n} {tuple(arrays[n].shape)}' for n in names)
    try:
      value = np.asarray(fn(*(arrays[n] for n in names)), np.float32)
    except (ValueError, IndexError) as e:
      mismatched.append(f'{sources}: cannot form {"/".join(path)} '
                        f'{tuple(want.shape)} ({e})')
      continue
    if value.shape != tuple(want.shape):
      moved = [arrays[n].shape for n in names] != [value.shape]
      mismatched.append(
          f'{sources}{f" -> {value.shape} in flax layout" if moved else ""}, '
          f'expected {tuple(want.shape)} for {"/".join(path)}')
      continue
    filled[path] = value
  unexpected = sorted(n for n in arrays if n not in used and not ignore(n))
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(_describe(model), missing, unexpected,
                                  mismatched)
  return traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in filled.items()})


def _describe(model: nn.Module) -> str:
  sizes = ('image_size', 'patch_size', 'width', 'depth', 'num_heads',
           'mlp_dim', 'num_classes')
  fields = [f'{k}={getattr(model, k)}' for k in sizes if hasattr(model, k)]
  return f'{type(model).__name__}({", ".join(fields)})'


# ----------------------------------------------- torch-style checkpoints

# flax (collection, leaf) -> torch parameter or buffer name
_TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
               ('params', 'bias'): 'bias',
               ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}


def _torch_plan(rename: Callable[[str], str] = lambda name: name) -> Plan:
  """Our paths equal torch module names (``layer1.0.conv1``, ``blocks.3.attn.
  qkv``); ``rename`` maps such a timm-style name to another family's."""

  def plan(path):
    collection, *modules, leaf = path
    name = ('.'.join([*modules, _TORCH_LEAF[collection, leaf]]) if modules
            else leaf)  # cls_token, pos_embed
    return (rename(name),), _torch_layout if leaf == 'kernel' else np.asarray
  return plan


def _torch_layout(w):
  return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T


def _ignore_torch(name: str) -> bool:
  return name.endswith('num_batches_tracked')  # a counter, not a weight


# timm's ViT names -> torchvision's VisionTransformer names
_LAYER = r'encoder.layers.encoder_layer_\1.'
_TORCHVISION_VIT_NAMES = [
    (r'^patch_embed\.proj\.', 'conv_proj.'),
    (r'^cls_token$', 'class_token'),
    (r'^pos_embed$', 'encoder.pos_embedding'),
    (r'^blocks\.(\d+)\.norm1\.', _LAYER + 'ln_1.'),
    (r'^blocks\.(\d+)\.attn\.qkv\.', _LAYER + 'self_attention.in_proj_'),
    (r'^blocks\.(\d+)\.attn\.proj\.', _LAYER + 'self_attention.out_proj.'),
    (r'^blocks\.(\d+)\.norm2\.', _LAYER + 'ln_2.'),
    (r'^blocks\.(\d+)\.mlp\.fc1\.', _LAYER + 'mlp.0.'),
    (r'^blocks\.(\d+)\.mlp\.fc2\.', _LAYER + 'mlp.3.'),
    (r'^norm\.', 'encoder.ln.'),
    (r'^head\.', 'heads.head.'),
]


def _torchvision_vit_name(name: str) -> str:
  for pattern, repl in _TORCHVISION_VIT_NAMES:
    name, n = re.subn(pattern, repl, name)
    if n:
      return name
  return name


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


# -------------------------------------------------------- public loaders


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
    model = _vit_from_torch(arrays, sizes, overrides, _torchvision_vit_name)
    plan = _torch_plan(_torchvision_vit_name)
  elif name.startswith(('resnet', 'vgg')) and name in models.names():
    head = 'fc.weight' if name.startswith('resnet') else 'classifier.6.weight'
    if 'num_classes' not in overrides and head in arrays:
      overrides = {**overrides, 'num_classes': arrays[head].shape[0]}
    model, plan = models.create(name, **overrides), _torch_plan()
  else:
    known = sorted({*_TORCHVISION_VITS, 'vit', *(
        n for n in models.names() if n.startswith(('resnet', 'vgg')))})
    raise ValueError(f'unknown torchvision model {name!r}; known: '
                     f'{", ".join(known)}')
  return model, _assemble(model, arrays, plan, _ignore_torch)


def from_timm(name: str, state_dict, **overrides):
  """Converts a timm Vision Transformer checkpoint (timm's names are ours).

  Args:
    name: ``vit_{tiny,small,base,large,huge}_patch{P}_{S}``, optionally with
      a pretrained tag (``vit_base_patch16_224.augreg_in21k``), or ``'vit'``
      for any plain timm ViT (sizes read from the weights, ``num_heads``
      given).
    state_dict: ``model.state_dict()`` or a checkpoint file.
    **overrides: ``image_size, patch_size, depth, num_heads, width, mlp_dim,
      num_classes`` (the last read from ``head`` when unset).

  Returns:
    ``(model, variables)`` with timm's logits.

  Raises:
    CheckpointMismatchError: names missing, unexpected and misshapen arrays
      (e.g. a ``fc_norm`` of a global-pool ViT, which ours does not have).
  """
  if name == 'vit':
    sizes = {}
  elif m := _TIMM_NAME.match(name):
    width, depth, heads = _TIMM_SIZES[m[1]]
    sizes = dict(width=width, depth=depth, num_heads=heads, mlp_dim=4 * width,
                 patch_size=int(m[2]), image_size=int(m[3]))
  else:
    raise ValueError(f'unknown timm model {name!r}; expected "vit" or '
                     'vit_{tiny,small,base,large,huge}_patch{P}_{S}, e.g. '
                     'vit_base_patch16_224')
  arrays = read_checkpoint(state_dict)
  model = _vit_from_torch(arrays, sizes, overrides, lambda n: n)
  return model, _assemble(model, arrays, _torch_plan(), _ignore_torch)


# ------------------------------------------------------------- big_vision

_BV_PREFIXES = ('', 'params/', 'opt/target/', 'params/img/')
# Block sub-modules as flax auto-named them: the original release numbered
# them in one sequence, big_vision's newer flax numbers each type on its own.
_BV_BLOCK = {
    True: dict(norm1='LayerNorm_0', attn='MultiHeadDotProductAttention_1',
               norm2='LayerNorm_2', mlp='MlpBlock_3'),
    False: dict(norm1='LayerNorm_0', attn='MultiHeadDotProductAttention_0',
                norm2='LayerNorm_1', mlp='MlpBlock_0'),
}
_BV_POS = {True: 'Transformer/posembed_input/pos_embedding',
           False: 'pos_embedding'}


def _big_vision_plan(scanned: bool, original: bool) -> Plan:
  """The original release (positions include the class token's) or
  big_vision's (positions are added before the class token is prepended),
  blocks numbered ``encoderblock_{i}`` or scanned along a leading axis."""
  names = _BV_BLOCK[original]
  same = np.asarray

  def plan(path):
    _, *mods, leaf = path
    if mods == ['patch_embed', 'proj']:
      return (f'embedding/{leaf}',), same
    if mods == ['norm']:
      return (f'Transformer/encoder_norm/{leaf}',), same
    if mods == ['head']:
      return (f'head/{leaf}',), same
    if leaf == 'cls_token':
      return ('cls',), same
    if leaf == 'pos_embed':  # big_vision's class token has no position
      return (_BV_POS[original],), same if original else (
          lambda p: np.concatenate([np.zeros_like(p[:, :1]), p], axis=1))
    _, i, *rest = mods  # blocks, i, ...
    block = ('Transformer/encoderblock/' if scanned
             else f'Transformer/encoderblock_{i}/')
    attn, fn = f'{block}{names["attn"]}/', same
    if rest[0] in ('norm1', 'norm2'):
      sources = (f'{block}{names[rest[0]]}/{leaf}',)
    elif rest[0] == 'mlp':  # fc1, fc2 -> Dense_0, Dense_1
      sources = (f'{block}{names["mlp"]}/Dense_{int(rest[1][-1]) - 1}/{leaf}',)
    elif rest == ['attn', 'qkv']:  # (D, H, hd) / (H, hd) -> (D, 3D) / (3D,)
      sources = tuple(f'{attn}{n}/{leaf}' for n in ('query', 'key', 'value'))
      lead = 1 if leaf == 'kernel' else 0
      fn = lambda *a: np.concatenate(  # noqa: E731
          [x.reshape(*x.shape[:lead], -1) for x in a], axis=-1)
    else:  # attn.proj: (H, hd, D) -> (D, D)
      sources = (f'{attn}out/{leaf}',)
      if leaf == 'kernel':
        fn = lambda w: w.reshape(-1, w.shape[-1])  # noqa: E731
    if scanned:
      return sources, lambda *a, f=fn: f(*(x[int(i)] for x in a))
    return sources, fn
  return plan


def from_big_vision(path_or_mapping, **overrides):
  """Converts a big_vision or original Google ViT checkpoint (``.npz``).

  Reads what timm's ``_load_weights`` reads for a plain ViT: the original
  release's layout (``Transformer/posembed_input``, ``encoderblock_{i}``)
  and big_vision's (top-level ``pos_embedding``, blocks optionally scanned as
  ``encoderblock`` with a leading depth axis). Only arrays under the first
  prefix that holds ``embedding/kernel`` (none, ``params/``, ``opt/target/``,
  ``params/img/``) are read, so optimiser state or a text tower is skipped;
  everything under it must fit. The model needs a class token
  (``pool_type='tok'``) and stored (learned) position embeddings.

  Args:
    path_or_mapping: a ``.npz`` path, or a mapping of ``/``-joined names (or
      a nested tree) to arrays.
    **overrides: ViT attributes; unset ones (width, depth, num_heads,
      patch_size, mlp_dim, num_classes, image_size) are read from the arrays.

  Returns:
    ``(model, variables)``.

  Raises:
    CheckpointMismatchError: names missing, unexpected (e.g. ``pre_logits``,
      which our ViT does not have) and misshapen arrays.

  Example::

    model, variables = convert.from_big_vision('ViT-B_16.npz')
  """
  arrays = read_checkpoint(path_or_mapping)
  prefix = next((p for p in _BV_PREFIXES if f'{p}embedding/kernel' in arrays),
                None)
  if prefix is None:
    raise ValueError('not a ViT checkpoint: no embedding/kernel under any of '
                     f'the prefixes {_BV_PREFIXES}')
  arrays = {k[len(prefix):]: v for k, v in arrays.items()
            if k.startswith(prefix)}
  scanned = 'Transformer/encoderblock/LayerNorm_0/scale' in arrays
  original = _BV_POS[True] in arrays
  names = _BV_BLOCK[original]
  block = 'Transformer/encoderblock' + ('/' if scanned else '_0/')

  kernel = arrays['embedding/kernel']  # (ph, pw, C, D)
  found = dict(patch_size=kernel.shape[0], width=kernel.shape[-1])
  found['depth'] = (
      arrays[f'{block}LayerNorm_0/scale'].shape[0] if scanned else
      sum(bool(re.fullmatch(r'Transformer/encoderblock_\d+/LayerNorm_0/scale',
                            k)) for k in arrays))
  for key, source, axis in (
      ('num_heads', f'{block}{names["attn"]}/query/kernel', -2),
      ('mlp_dim', f'{block}{names["mlp"]}/Dense_0/kernel', -1),
      ('num_classes', 'head/kernel', -1),
      ('image_size', _BV_POS[original], -2)):
    if source in arrays:
      found[key] = arrays[source].shape[axis]
  if 'image_size' in found:  # from the number of positions
    found['image_size'] = math.isqrt(found['image_size'] - original) * \
        found['patch_size']
  model = vit.ViT(**{**found, **overrides})
  return model, _assemble(model, arrays, _big_vision_plan(scanned, original))


def to_big_vision(variables, path, *, num_heads: int) -> None:
  """Writes ViT variables as an original-release ViT ``.npz``.

  The layout of the released ``ViT-B_16.npz`` files, without ``pre_logits``:
  what timm's ``load_pretrained`` / ``_load_weights`` and ``from_big_vision``
  read.

  Args:
    variables: ``{'params': ...}`` of a ``models.ViT`` (or the params alone).
    path: the file to write (as given: no ``.npz`` is appended).
    num_heads: attention heads. big_vision stores q, k and v per head, and the
      split cannot be read from the fused ``qkv`` kernel.

  Example::

    model, variables = convert.from_timm('vit_base_patch16_224', state_dict)
    convert.to_big_vision(variables, 'vit_b16.npz', num_heads=model.num_heads)
  """
  p = traverse_util.flatten_dict(
      jax.tree.map(np.asarray, dict(variables.get('params', variables))),
      sep='/')
  if 'cls_token' not in p:
    raise ValueError('to_big_vision expects the variables of a models.ViT')
  width = p['cls_token'].shape[-1]
  if width % num_heads:
    raise ValueError(f'width {width} is not divisible by num_heads {num_heads}')
  heads = (num_heads, width // num_heads)
  out = {'embedding/kernel': p['patch_embed/proj/kernel'],
         'embedding/bias': p['patch_embed/proj/bias'],
         'cls': p['cls_token'], _BV_POS[True]: p['pos_embed'],
         'Transformer/encoder_norm/scale': p['norm/scale'],
         'Transformer/encoder_norm/bias': p['norm/bias'],
         'head/kernel': p['head/kernel'], 'head/bias': p['head/bias']}
  names = _BV_BLOCK[True]
  i = 0
  while f'blocks/{i}/norm1/scale' in p:
    src, dst = f'blocks/{i}/', f'Transformer/encoderblock_{i}/'
    for norm in ('norm1', 'norm2'):
      for leaf in ('scale', 'bias'):
        out[f'{dst}{names[norm]}/{leaf}'] = p[f'{src}{norm}/{leaf}']
    for k in (0, 1):
      for leaf in ('kernel', 'bias'):
        out[f'{dst}{names["mlp"]}/Dense_{k}/{leaf}'] = p[
            f'{src}mlp/fc{k + 1}/{leaf}']
    attn = f'{dst}{names["attn"]}/'
    kernels = np.split(p[f'{src}attn/qkv/kernel'], 3, axis=1)
    biases = np.split(p[f'{src}attn/qkv/bias'], 3)
    for n, k, b in zip(('query', 'key', 'value'), kernels, biases):
      out[f'{attn}{n}/kernel'] = k.reshape(width, *heads)
      out[f'{attn}{n}/bias'] = b.reshape(heads)
    out[f'{attn}out/kernel'] = p[f'{src}attn/proj/kernel'].reshape(*heads,
                                                                   width)
    out[f'{attn}out/bias'] = p[f'{src}attn/proj/bias']
    i += 1
  with open(path, 'wb') as f:  # a file object: np.savez would append .npz
    np.savez(f, **{k: np.asarray(v, np.float32) for k, v in out.items()})
