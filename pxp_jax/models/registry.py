"""Every model by name: ``create(name, num_classes=..., **overrides)``.

The names are the ``variants`` of the registered family specs
(``pxp_jax.models.spec.register``, called by each family's module, which
``pxp_jax.models`` imports by discovery)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from pxp_jax.models import spec


def _models() -> dict[str, Callable[..., nn.Module]]:
  """Every registered name -> its factory: the ``variants`` of every
  family's spec (each family module registers its own)."""
  return {name: factory for s in spec.registered()
          for name, factory in s.variants.items()}


def names() -> list[str]:
  """The registered model names."""
  return sorted(_models())


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
  known = _models()
  if name not in known:
    raise ValueError(f'unknown model {name!r}; known models: '
                     f'{", ".join(names())}')
  factory = known[name]
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
  for name, factory in sorted(_models().items()):
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
