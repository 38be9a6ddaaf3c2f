"""Vision Transformer, the same network as timm's and torchvision's ViT.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021: patch
embedding by a strided conv, a class token, learned position embeddings,
pre-LayerNorm blocks (multi-head self-attention, GELU MLP), a final LayerNorm
and a linear head on the class token. Module paths follow timm
(``patch_embed.proj``, ``blocks.3.attn.qkv``, ``blocks.3.mlp.fc1``, ``head``);
the attention's parts are separate modules (``qkv``, ``qk`` = Q K^T,
``softmax``, ``av`` = A V, ``proj``) so that AttnLRP rules and head masks
reach them. big_vision / original-ViT checkpoints hold the same parameters in
another layout; ``pxp_jax.convert`` maps them both ways.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from pxp_jax.models import layers, spec
from pxp_jax.models.kinds import Kind

_DENSE_INIT = nn.initializers.xavier_uniform()


def _dense(features: int, name: str, empty: bool = False) -> nn.Dense:
  """``empty``: a layer between which and its neighbour no unit is left
  (a slimmed model's), whose zero-size kernel xavier cannot initialise."""
  return nn.Dense(features, name=name, kernel_init=nn.initializers.zeros
                  if empty else _DENSE_INIT)


class Attention(nn.Module):
  """Multi-head self-attention: softmax(Q K^T / sqrt(d)) V, then ``proj``.

  ``head_dim``: each head's width (None: width / num_heads); given, the
  heads need not fill the width (a slimmed block, ``pxp_jax.prune.slim``; with no
  heads left the output is ``proj``'s bias)."""

  num_heads: int
  head_dim: int | None = None

  @nn.compact
  def __call__(self, x):
    n, tokens, width = x.shape
    head_dim = self.head_dim
    if head_dim is None:
      if width % self.num_heads:
        raise ValueError(f'width {width} is not divisible by num_heads '
                         f'{self.num_heads}')
      head_dim = width // self.num_heads
    inner = self.num_heads * head_dim
    qkv = _dense(3 * inner, 'qkv', not inner)(x)
    # (N, T, 3, H, D) -> three (N, H, T, D)
    qkv = qkv.reshape(n, tokens, 3, self.num_heads, head_dim)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    scores = layers.QueryKey(name='qk')(q * head_dim**-0.5, k.swapaxes(-1, -2))
    attn = layers.Softmax(name='softmax')(scores)
    out = layers.AttentionValue(name='av')(attn, v)
    out = out.transpose(0, 2, 1, 3).reshape(n, tokens, inner)
    return _dense(width, 'proj', not inner)(out)


class Mlp(nn.Module):
  """``fc1`` -> GELU (``act``) -> ``fc2``."""

  hidden: int

  @nn.compact
  def __call__(self, x):
    empty = not self.hidden
    y = layers.GELU(name='act')(_dense(self.hidden, 'fc1', empty)(x))
    return _dense(x.shape[-1], 'fc2', empty)(y)


class Block(nn.Module):
  """Pre-norm encoder block: x + attn(norm1(x)), then x + mlp(norm2(x));
  ``head_dim`` as ``Attention``'s."""

  num_heads: int
  mlp_dim: int
  ln_eps: float = 1e-6
  head_dim: int | None = None

  @nn.compact
  def __call__(self, x):
    y = Attention(self.num_heads, self.head_dim, name='attn')(
        nn.LayerNorm(self.ln_eps, name='norm1')(x))
    x = layers.Sum(name='residual1')(x, y)
    y = Mlp(self.mlp_dim, name='mlp')(nn.LayerNorm(self.ln_eps, name='norm2')(x))
    return layers.Sum(name='residual2')(x, y)


class Blocks(nn.Module):
  """``blocks.0 .. blocks.{depth-1}``; ``remat``: each under ``nn.remat``;
  ``block_heads`` and ``block_mlp_dims``: per-block head counts and MLP
  widths (None: ``num_heads`` and ``mlp_dim`` everywhere), heads of
  ``width / num_heads`` channels either way."""

  depth: int
  num_heads: int
  mlp_dim: int
  ln_eps: float
  remat: bool = False
  block_heads: tuple[int, ...] | None = None
  block_mlp_dims: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x):
    block = nn.remat(Block) if self.remat else Block
    for name, sizes in (('block_heads', self.block_heads),
                        ('block_mlp_dims', self.block_mlp_dims)):
      if sizes is not None and len(sizes) != self.depth:
        raise ValueError(f'{name} has {len(sizes)} entries for {self.depth} '
                         f'blocks: {tuple(sizes)}')
    slim = self.block_heads is not None
    head_dim = x.shape[-1] // self.num_heads if slim else None
    for i in range(self.depth):
      heads = self.block_heads[i] if slim else self.num_heads
      mlp = (self.mlp_dim if self.block_mlp_dims is None
             else self.block_mlp_dims[i])
      x = block(heads, mlp, self.ln_eps, head_dim, name=str(i))(x)
    return x


class PatchEmbed(nn.Module):
  """``proj``: a patch_size-strided conv, then flattened to tokens."""

  patch_size: int
  width: int

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = layers.Conv(self.width, (p, p), (p, p), padding='VALID', name='proj',
                    kernel_init=nn.initializers.lecun_normal())(x)
    return x.reshape(x.shape[0], -1, self.width)


class ViT(nn.Module):
  """ViT classifier on NHWC inputs; returns the logits of the class token.

  Attributes:
    image_size: input height and width (fixes the number of positions).
    patch_size: side of the square patches.
    width: token width (embed dim).
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of the MLP (4 x width in the standard sizes).
    num_classes: outputs of ``head``.
    ln_eps: LayerNorm epsilon (1e-6 in timm, torchvision and big_vision).
    remat: recompute each block's activations in the backward pass
      (``nn.remat`` per block): less memory for gradients and relevance at
      the cost of a second forward pass; the same parameters, paths and
      values.
    block_heads: heads of each block (None: ``num_heads`` in every block),
      each ``width / num_heads`` wide: a slimmed model (``pxp_jax.prune.slim``).
    block_mlp_dims: MLP hidden width of each block (None: ``mlp_dim``).
  """

  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_classes: int = 1000
  ln_eps: float = 1e-6
  remat: bool = False
  block_heads: tuple[int, ...] | None = None
  block_mlp_dims: tuple[int, ...] | None = None

  def __post_init__(self):
    super().__post_init__()
    for name in ('image_size', 'patch_size', 'width', 'depth', 'num_heads',
                 'mlp_dim', 'num_classes'):
      spec.check_int(self, name)
    if self.image_size % self.patch_size:
      raise ValueError(f'ViT: image_size {self.image_size} is not a multiple '
                       f'of patch_size {self.patch_size}')
    if self.width % self.num_heads:
      raise ValueError(f'ViT: width {self.width} is not divisible by '
                       f'num_heads {self.num_heads}')
    if (isinstance(self.ln_eps, bool)
        or not isinstance(self.ln_eps, (int, float, np.number))
        or not np.isfinite(self.ln_eps) or self.ln_eps < 0):
      raise ValueError(f'ViT: ln_eps must be a finite number >= 0, got '
                       f'{self.ln_eps!r}')
    spec.check_bool(self, 'remat')
    for name in ('block_heads', 'block_mlp_dims'):  # 0: all pruned
      if getattr(self, name) is not None:
        spec.check_sizes(self, name, 0, self.depth)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout and no BatchNorm: the same network either way
    layers.check_images(x, size=(self.image_size, self.image_size))
    x = PatchEmbed(self.patch_size, self.width, name='patch_embed')(x)
    cls = self.param('cls_token', nn.initializers.zeros, (1, 1, self.width))
    pos = self.param('pos_embed', nn.initializers.normal(0.02),
                     (1, x.shape[1] + 1, self.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)),
                         x], axis=1) + pos
    x = Blocks(self.depth, self.num_heads, self.mlp_dim, self.ln_eps,
               self.remat, _tuple(self.block_heads),
               _tuple(self.block_mlp_dims), name='blocks')(x)
    x = nn.LayerNorm(self.ln_eps, name='norm')(x)
    return nn.Dense(self.num_classes, name='head',
                    kernel_init=nn.initializers.zeros)(x[:, 0])


def _tuple(sizes):
  return None if sizes is None else tuple(sizes)


def _layer_groups(found, boundaries) -> dict[str, list[str]]:
  """PXP's groups for a ViT as the reference's composites (Hatefi et al.,
  2024): the linear layers of the blocks (q/k/v and output projections, both
  MLP layers) grouped by block, the first quarter of the blocks low, the
  last quarter high, the rest middle (ViT-B/16: blocks 0-2 / 3-8 / 9-11,
  ViT-L/16: 0-5 / 6-17 / 18-23); ``boundaries``: blocks ``i`` with ``b1 <=
  i / depth < b2`` middle instead. The patch embedding, which the
  reference leaves to the gradient, joins the low group; the head is
  ``fc``."""
  output = found.output_layer
  blocks: dict[int, list[str]] = {}
  outside = []
  for op in found.of_kind(Kind.CONV, Kind.DENSE):
    match = re.match(r'blocks\.(\d+)\.', op.path)
    if match:
      blocks.setdefault(int(match[1]), []).append(op.path)
    elif op.path != output:
      outside.append(op.path)
  if boundaries is None:
    quarter = max(1, len(blocks) // 4)
    groups = spec.split_by_stage([blocks[i] for i in sorted(blocks)], quarter,
                                 max(quarter, len(blocks) - quarter))
  else:
    cut = spec.split_by_order(sorted(blocks), boundaries)
    groups = {g: [p for i in cut[g] for p in blocks[i]] for g in cut}
  groups['low'] = outside + groups['low']
  groups['fc'] = [output]
  return groups


def _unit_params(unit, found, shapes) -> tuple[spec.Share, ...]:
  """A ViT's units own their parameters as any layer's do, and more: a
  head owns its columns of the fused ``attn.qkv`` (laid out (3, heads,
  head_dim)) and its rows of ``attn.proj``; an MLP neuron of ``fc1`` its
  column and bias and its row of ``fc2``."""
  if unit.type == 'heads':
    return spec.fused_qkv(unit, shapes, proj='proj')
  return spec.mlp_params(unit, found, shapes)


_TOKEN_WIDTH = ('writes the token width, which every LayerNorm reads whole '
                'and every block adds to')
_QKV = ('a query, key or value channel of a head: the heads of a block keep '
        'one width (prune heads to remove them)')


def _slim(model: ViT, edit) -> ViT:
  """``prune.slim`` of a ViT (``edit``: ``prune.slim.Edit``): heads lose
  their query, key and value columns and their rows of ``proj``; ``fc1``
  neurons their column and ``fc2``'s row. Units on the token width stay,
  zeroed."""
  heads, mlp = [], []
  for i in range(model.depth):
    attn, fc1 = f'blocks.{i}.attn', f'blocks.{i}.mlp.fc1'
    n_heads = (model.num_heads if model.block_heads is None
               else model.block_heads[i])
    gone = edit.mask(attn, n_heads)
    edit.remove(attn, gone)
    heads.append(int((~gone).sum()))
    gone = edit.mask(fc1)
    edit.remove(fc1, gone)
    mlp.append(int((~gone).sum()))
  for key, unit in edit.units.items():
    if (key in edit.pruned and unit.type not in ('heads', 'output')
        and key not in edit.handled):
      edit.zero_outputs(key, edit.mask(key), _QKV if key.endswith('.qkv')
                        else _TOKEN_WIDTH)
  new = {}
  if model.block_heads is not None or any(h != model.num_heads for h in heads):
    new['block_heads'] = tuple(heads)
  if model.block_mlp_dims is not None or any(m != model.mlp_dim for m in mlp):
    new['block_mlp_dims'] = tuple(mlp)
  return model.clone(**new)


# timm's names (ours) -> torchvision's VisionTransformer names
_LAYER = r'encoder.layers.encoder_layer_\1.'
_TORCHVISION_NAMES = [
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


def _torchvision_name(name: str) -> str:
  """torchvision's ViT name for our (timm's) ``name`` (others unchanged)."""
  for pattern, repl in _TORCHVISION_NAMES:
    name, n = re.subn(pattern, repl, name)
    if n:
      return name
  return name


VARIANTS = {
    # timm's vit_{tiny,small,base}_patch16_224
    'vit_ti16': functools.partial(ViT, width=192, depth=12, num_heads=3,
                                  mlp_dim=768),
    'vit_s16': functools.partial(ViT, width=384, depth=12, num_heads=6,
                                 mlp_dim=1536),
    'vit_b16': functools.partial(ViT, width=768, depth=12, num_heads=12,
                                 mlp_dim=3072),
    # 32x32 inputs, 4x4 patches
    'vit_small_input': functools.partial(ViT, image_size=32, patch_size=4,
                                         width=96, depth=6, num_heads=4,
                                         mlp_dim=192),
    'vit_tiny': functools.partial(ViT, image_size=32, patch_size=8, width=32,
                                  depth=2, num_heads=2, mlp_dim=64),
}

SPEC = spec.register(spec.Spec(
    'vit', ViT, variants=VARIANTS, transformer=True, units='neurons',
    pruning_preset='vit_groups', heatmap_preset='attn_lrp',
    layer_groups=_layer_groups, unit_params=_unit_params, slim=_slim,
    classifier='head',
    checkpoint_names={'torchvision': _torchvision_name,
                      'timm': spec.same_names},
    exports=('big_vision',)))
