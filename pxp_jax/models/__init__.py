"""Flax model families built from named operations (see ``layers``), what
each operation computes (``kinds``), each family's spec (``spec``), and the
one way into a model's operations: ``taps`` (every operation call handed
to taps) and ``structure`` (the operations and units read by one tap).

A family is its module here and the spec it registers (its model names,
groups, rules, unit parameters, slimming, checkpoints): every module of
this package is imported below, so a new family's file is all it takes.
"""

import importlib
import pkgutil

from pxp_jax.models import kinds, layers, spec, structure, taps
from pxp_jax.models.registry import create, describe, names
from pxp_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from pxp_jax.models.spec import spec_for
from pxp_jax.models.vgg import VGG
from pxp_jax.models.vit import ViT

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')
del _module

__all__ = ['create', 'describe', 'names', 'kinds', 'layers', 'spec', 'structure', 'taps',
           'spec_for', 'ResNet', 'BasicBlock', 'Bottleneck', 'VGG', 'ViT']
