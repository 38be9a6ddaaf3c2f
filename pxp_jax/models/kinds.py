"""What each module computes, by its class: the operation kinds that LRP
rules, unit probes and pruning masks are attached to.

A kind is decided by ``isinstance`` against a table (``kind_of``), never by
a class or path name, so a subclass of ``flax.linen.Conv`` is a conv and a
user's own operation module joins with ``register(cls, kind)``.
"""

from __future__ import annotations

import enum

import flax.linen as nn

from pxp_jax.models import layers


class Kind(enum.Enum):
  """Operation kinds. ``ATTENTION`` is a whole attention module (flax's
  ``MultiHeadDotProductAttention``) whose inner products and softmax are
  reached as operations of their own (see ``pxp_jax.models.taps``)."""

  CONV = 'conv'
  DENSE = 'dense'
  BATCH_NORM = 'batch_norm'
  LAYER_NORM = 'layer_norm'
  RELU = 'relu'
  GELU = 'gelu'
  SOFTMAX = 'softmax'
  QUERY_KEY = 'query_key'          # attention scores Q K^T
  ATTENTION_VALUE = 'attention_value'  # A V
  SUM = 'sum'
  MAX_POOL = 'max_pool'
  AVG_POOL = 'avg_pool'
  RESHAPE = 'reshape'
  SCALE = 'scale'  # x times a parameter vector: a layer scale
  ATTENTION = 'attention'


LINEAR = frozenset({Kind.CONV, Kind.DENSE})
# Kinds whose output is >= 0 always, or whenever all their inputs are.
NON_NEGATIVE = frozenset({Kind.RELU, Kind.SOFTMAX})
SIGN_KEEPING = frozenset({Kind.MAX_POOL, Kind.AVG_POOL, Kind.RESHAPE,
                          Kind.SUM})

# Most specific classes first: the first isinstance match decides.
_TABLE: list[tuple[type, Kind]] = [
    (nn.Conv, Kind.CONV),
    (nn.Dense, Kind.DENSE),
    (nn.DenseGeneral, Kind.DENSE),
    (nn.BatchNorm, Kind.BATCH_NORM),
    (nn.LayerNorm, Kind.LAYER_NORM),
    (nn.MultiHeadDotProductAttention, Kind.ATTENTION),
    (layers.ReLU, Kind.RELU),
    (layers.GELU, Kind.GELU),
    (layers.Softmax, Kind.SOFTMAX),
    (layers.QueryKey, Kind.QUERY_KEY),
    (layers.AttentionValue, Kind.ATTENTION_VALUE),
    (layers.Sum, Kind.SUM),
    (layers.MaxPool, Kind.MAX_POOL),
    (layers.AdaptiveAvgPool, Kind.AVG_POOL),
    (layers.GlobalAvgPool, Kind.AVG_POOL),
    (layers.Flatten, Kind.RESHAPE),
    (layers.LayerScale, Kind.SCALE),
]


# Modules that compute the identity whenever a model is explained or pruned
# (dropout: attribution runs without a dropout rng, so a dropout that is not
# deterministic fails in flax): their calls are no operations (no rule, no
# unit, absent from a model's structure); the gradient passes them.
TRANSPARENT: tuple[type, ...] = (nn.Dropout,)


def is_transparent(module: nn.Module) -> bool:
  return isinstance(module, TRANSPARENT)


def kind_of(module: nn.Module) -> Kind | None:
  """The kind of ``module``, or None for containers and unknown modules."""
  for cls, kind in _TABLE:
    if isinstance(module, cls):
      return kind
  return None


def register(cls: type, kind: Kind) -> None:
  """Declares that modules of ``cls`` (and subclasses) compute ``kind``,
  e.g. ``register(MyGELU, Kind.GELU)``; it takes precedence over the
  built-in table."""
  if not isinstance(kind, Kind):
    raise TypeError(f'kind must be a pxp_jax.models.kinds.Kind, got {kind!r}')
  _TABLE.insert(0, (cls, kind))
