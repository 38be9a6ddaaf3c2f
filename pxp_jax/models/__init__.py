"""Flax ResNet, VGG and ViT built from named operations (see ``layers``)."""

from pxp_jax.models import layers
from pxp_jax.models.registry import create, names
from pxp_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from pxp_jax.models.vgg import VGG
from pxp_jax.models.vit import ViT

__all__ = ['create', 'names', 'layers', 'ResNet', 'BasicBlock', 'Bottleneck',
           'VGG', 'ViT']
