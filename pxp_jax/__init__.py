"""pxp_jax: pruning neural networks by explaining them, in JAX.

``pxp_jax.attribute`` computes LRP relevance (``pxp_jax.relevance``).
Submodules load on first use (``pxp_jax.models``, ``pxp_jax.convert``,
``pxp_jax.data``, ``pxp_jax.composites``, ...), so ``import pxp_jax`` stays
cheap.
"""

import importlib

__version__ = '0.1.0'

_SUBMODULES = ('models', 'convert', 'data', 'checkpoints', 'train',
               'evaluate', 'rules', 'composites', 'canonize', 'structure',
               'relevance', 'plot', 'criteria', 'pruning', 'finetune',
               'experiment', 'search')


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'pxp_jax.{name}')
  if name in ('attribute', 'Attribution'):
    return getattr(importlib.import_module('pxp_jax.relevance'), name)
  raise AttributeError(f'module pxp_jax has no attribute {name!r}')


def __dir__():
  return sorted([*globals(), *_SUBMODULES, 'attribute', 'Attribution'])
