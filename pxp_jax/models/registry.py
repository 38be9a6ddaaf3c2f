"""Every model by name: ``create(name, num_classes=..., **overrides)``."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn

from pxp_jax.models import resnet, vgg, vit

_R = resnet.ResNet
_MODELS: dict[str, Callable[..., nn.Module]] = {
    # torchvision ResNets
    'resnet18': functools.partial(_R, stage_sizes=(2, 2, 2, 2),
                                  block=resnet.BasicBlock),
    'resnet34': functools.partial(_R, stage_sizes=(3, 4, 6, 3),
                                  block=resnet.BasicBlock),
    'resnet50': functools.partial(_R, stage_sizes=(3, 4, 6, 3),
                                  block=resnet.Bottleneck),
    # 32x32 inputs: 3x3 stem, no max-pool, a quarter of the width
    'resnet18_small': functools.partial(_R, stage_sizes=(2, 2, 2, 2),
                                        block=resnet.BasicBlock,
                                        small_input=True, width=0.25),
    'resnet_tiny': functools.partial(_R, stage_sizes=(1, 1, 1, 1),
                                     block=resnet.BasicBlock,
                                     small_input=True, width=0.125),
    # torchvision VGGs
    **{f'{name}{suffix}': functools.partial(vgg.VGG, config=cfg,
                                            batch_norm=bool(suffix))
       for name, cfg in vgg.CONFIGS.items() for suffix in ('', '_bn')},
    'vgg_tiny': functools.partial(vgg.VGG, config=(8, 'M', 16, 'M', 16, 'M'),
                                  batch_norm=True, hidden=32, pool_size=(2, 2)),
    # ViTs (timm's vit_{tiny,small,base}_patch16_224)
    'vit_ti16': functools.partial(vit.ViT, width=192, depth=12, num_heads=3,
                                  mlp_dim=768),
    'vit_s16': functools.partial(vit.ViT, width=384, depth=12, num_heads=6,
                                 mlp_dim=1536),
    'vit_b16': functools.partial(vit.ViT, width=768, depth=12, num_heads=12,
                                 mlp_dim=3072),
    # 32x32 inputs, 4x4 patches
    'vit_small_input': functools.partial(vit.ViT, image_size=32, patch_size=4,
                                         width=96, depth=6, num_heads=4,
                                         mlp_dim=192),
    'vit_tiny': functools.partial(vit.ViT, image_size=32, patch_size=8,
                                  width=32, depth=2, num_heads=2, mlp_dim=64),
}


def names() -> list[str]:
  """The registered model names."""
  return sorted(_MODELS)


def create(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
  """Builds a registered model.

  Args:
    name: one of ``names()``, e.g. ``'resnet18'``, ``'vgg16_bn'``, ``'vit_b16'``.
    num_classes: outputs of the classifier.
    **overrides: any attribute of the model class (``width=0.5``,
      ``image_size=384``, ``depth=6``, ...).

  Returns:
    An unbound flax module; ``model.init(key, x)`` gives its variables and
    ``model.apply(variables, x)`` its logits for NHWC float images ``x``.
  """
  if name not in _MODELS:
    raise ValueError(f'unknown model {name!r}; known models: '
                     f'{", ".join(names())}')
  factory = _MODELS[name]
  fields = set(factory.func.__dataclass_fields__) - {'parent', 'name'}
  unknown = set(overrides) - fields
  if unknown:
    raise TypeError(f'{name} has no attribute(s) {sorted(unknown)}; it takes '
                    f'{sorted(fields)}')
  return factory(num_classes=num_classes, **overrides)


def describe(model: nn.Module) -> tuple[str, dict]:
  """``(name, overrides)`` with ``create(name, model.num_classes,
  **overrides)`` equal to ``model``: the registered entry of its class that
  needs the fewest overrides (what a checkpoint's ``model.json`` records)."""
  fields = [f for f in model.__dataclass_fields__
            if f not in ('parent', 'name', 'num_classes')]
  best = None
  for name, factory in sorted(_MODELS.items()):
    if factory.func is not type(model):
      continue
    default = factory(num_classes=model.num_classes)
    overrides = {f: getattr(model, f) for f in fields
                 if getattr(model, f) != getattr(default, f)}
    if best is None or len(overrides) < len(best[1]):
      best = (name, overrides)
  if best is None:
    raise ValueError(f'{type(model).__name__} is not a registered model class')
  return best
