"""The mechanism every loader shares: a *plan* fills the model's variables.

``expected(model)`` gives the flax paths and shapes ``model.init`` would
create; a ``Plan`` maps each path to the checkpoint arrays it is made of and
the function that turns them into it; ``assemble`` runs the plan and raises
one ``CheckpointMismatchError`` for everything missing, left over or
misshapen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]
# expected flax path -> (checkpoint names, function of those arrays -> array)
Plan = Callable[[Path], tuple[tuple[str, ...], Callable[..., Any]]]


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model; ``missing``, ``unexpected`` and
  ``mismatched`` hold the offending checkpoint names (and shapes)."""

  def __init__(self, model: str, missing, unexpected, mismatched):
    self.missing, self.unexpected = list(missing), list(unexpected)
    self.mismatched = list(mismatched)
    lines = [f'checkpoint does not match {model}:']
    for title, items in (('missing', self.missing),
                         ('unexpected', self.unexpected),
                         ('shape mismatch', self.mismatched)):
      if items:
        lines.append(f'  {title} ({len(items)}):')
        lines += [f'    {item}' for item in items[:50]]
        if len(items) > 50:
          lines.append(f'    ... and {len(items) - 50} more')
    super().__init__('\n'.join(lines))


def expected(model: nn.Module) -> dict[Path, jax.ShapeDtypeStruct]:
  """The flat ``{path: shape and dtype}`` of ``model``'s variables, from
  ``jax.eval_shape`` of its init on one NHWC image (nothing is computed)."""
  size = getattr(model, 'image_size', 224)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return traverse_util.flatten_dict(dict(shapes))


def assemble(model: nn.Module, arrays: Mapping[str, np.ndarray], plan: Plan,
             ignore: Callable[[str], bool] = lambda name: False) -> dict:
  """Fills every variable of ``model`` through ``plan``, or raises one
  CheckpointMismatchError that lists everything that went wrong."""
  filled, used, missing, mismatched = {}, set(), {}, []
  for path, want in expected(model).items():
    names, fn = plan(path)
    absent = [n for n in names if n not in arrays]
    missing.update(dict.fromkeys(absent))
    if absent:
      continue
    used.update(names)
    sources = ', '.join(f'{n} {tuple(arrays[n].shape)}' for n in names)
    try:
      value = np.asarray(fn(*(arrays[n] for n in names)), np.float32)
    except (ValueError, IndexError) as e:
      mismatched.append(f'{sources}: cannot form {"/".join(path)} '
                        f'{tuple(want.shape)} ({e})')
      continue
    if value.shape != tuple(want.shape):
      moved = [arrays[n].shape for n in names] != [value.shape]
      mismatched.append(
          f'{sources}{f" -> {value.shape} in flax layout" if moved else ""}, '
          f'expected {tuple(want.shape)} for {"/".join(path)}')
      continue
    filled[path] = value
  unexpected = sorted(n for n in arrays if n not in used and not ignore(n))
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(describe(model), missing, unexpected,
                                  mismatched)
  return traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in filled.items()})


def describe(model: nn.Module) -> str:
  """``ViT(image_size=224, ...)``: the model's class and size attributes."""
  sizes = ('image_size', 'patch_size', 'width', 'depth', 'num_heads',
           'mlp_dim', 'num_classes')
  fields = [f'{k}={getattr(model, k)}' for k in sizes if hasattr(model, k)]
  return f'{type(model).__name__}({", ".join(fields)})'
