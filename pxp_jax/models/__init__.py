"""Flax ResNet, VGG and ViT built from named operations (see ``layers``),
what each operation computes (``kinds``) and each family's spec (``spec``)."""

from pxp_jax.models import kinds, layers, spec
from pxp_jax.models.registry import create, describe, names
from pxp_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from pxp_jax.models.spec import spec_for
from pxp_jax.models.vgg import VGG
from pxp_jax.models.vit import ViT

__all__ = ['create', 'describe', 'names', 'kinds', 'layers', 'spec',
           'spec_for', 'ResNet', 'BasicBlock', 'Bottleneck', 'VGG', 'ViT']
