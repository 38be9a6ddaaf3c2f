"""Flax ResNet, VGG and ViT built from named operations (see ``layers``),
what each operation computes (``kinds``), each family's spec (``spec``), and
the one way into a model's operations: ``taps`` (every operation call handed
to taps) and ``structure`` (the operations and units read by one tap)."""

from pxp_jax.models import kinds, layers, spec, structure, taps
from pxp_jax.models.registry import create, describe, names
from pxp_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from pxp_jax.models.spec import spec_for
from pxp_jax.models.vgg import VGG
from pxp_jax.models.vit import ViT

__all__ = ['create', 'describe', 'names', 'kinds', 'layers', 'spec', 'structure', 'taps',
           'spec_for', 'ResNet', 'BasicBlock', 'Bottleneck', 'VGG', 'ViT']
