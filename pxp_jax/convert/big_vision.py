"""big_vision and original Google ViT checkpoints (``.npz``), both ways.

``from_big_vision`` reads the original release's layout
(``Transformer/posembed_input``, ``encoderblock_{i}``) and big_vision's
(top-level ``pos_embedding``, blocks optionally scanned); ``to_big_vision``
writes the original release's. Attention is stored per head (q, k, v and
out), which the plan fuses into our ``qkv`` and ``proj``.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from flax import traverse_util

from pxp_jax.convert.assemble import Plan, assemble
from pxp_jax.convert.reading import read_checkpoint
from pxp_jax.models import vit

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
  return model, assemble(model, arrays, _big_vision_plan(scanned, original))


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
