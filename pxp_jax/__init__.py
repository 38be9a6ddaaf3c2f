"""pxp_jax: pruning neural networks by explaining them, in JAX.

The data flow and the subpackages that hold it::

  data (sources, the few-class task and draws) -> models -> lrp (rules,
  composites, attribute) -> prune (criteria, masks, evaluate, fine-tune) ->
  search (space, objective, driver) -> jobs (task, prune, search, train)

``pxp_jax.attribute`` computes LRP relevance; ``pxp_jax.composites`` holds
the composites and ``pxp_jax.rules`` the rules. Submodules load on first use,
so ``import pxp_jax`` stays cheap.
"""

import importlib

__version__ = '0.1.0'

_SUBMODULES = ('models', 'convert', 'data', 'checkpoints', 'checks',
               'plot', 'lrp', 'prune', 'search', 'jobs')
_ALIASES = {'composites': 'pxp_jax.lrp.composites', 'rules': 'pxp_jax.lrp.rules'}


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'pxp_jax.{name}')
  if name in _ALIASES:
    return importlib.import_module(_ALIASES[name])
  if name in ('attribute', 'Attribution'):
    return getattr(importlib.import_module('pxp_jax.lrp.attribution'), name)
  raise AttributeError(f'module pxp_jax has no attribute {name!r}')


def __dir__():
  return sorted([*globals(), *_SUBMODULES, *_ALIASES, 'attribute',
                 'Attribution'])
