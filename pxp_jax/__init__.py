"""pxp_jax: pruning neural networks by explaining them, in JAX.

Submodules load on first use (``pxp_jax.models``, ``pxp_jax.convert``,
``pxp_jax.data``, ``pxp_jax.checkpoints``), so ``import pxp_jax`` stays cheap.
"""

import importlib

__version__ = '0.1.0'

_SUBMODULES = ('models', 'convert', 'data', 'checkpoints', 'train')


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'pxp_jax.{name}')
  raise AttributeError(f'module pxp_jax has no attribute {name!r}')


def __dir__():
  return sorted([*globals(), *_SUBMODULES])
