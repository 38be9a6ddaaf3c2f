"""Model checkpoints on disk: orbax-saved variables plus the model's recipe.

A checkpoint is a folder::

  model.json     {"model": registry name, "num_classes": ..., "overrides": {...},
                  "preprocess": {...}, ...metadata such as the test accuracy}
  variables/     the flax variables, written by orbax's StandardCheckpointer

``load("resnet_digits")`` finds the checkpoints shipped in the package's
``shipped/`` folder (or in ``$PXP_JAX_CHECKPOINTS``); ``load(path)`` reads
any such folder. A slim model (``pxp_jax.slim``) keeps its per-layer widths
in ``overrides`` (ResNet ``widths``, VGG ``config`` and ``hidden``, ViT
``block_heads`` and ``block_mlp_dims``); ``save_model`` finds its registry
name and overrides itself.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pxp_jax import distribute, models

RECIPE = 'model.json'
VARIABLES = 'variables'


def shipped_dir() -> pathlib.Path:
  """Where named checkpoints live: ``$PXP_JAX_CHECKPOINTS`` or the package's
  ``shipped/`` folder (package data: in the wheel and in a clone)."""
  env = os.environ.get('PXP_JAX_CHECKPOINTS')
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(__file__).resolve().parent / 'shipped'


def names() -> list[str]:
  """Names of the shipped checkpoints."""
  root = shipped_dir()
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir() if (p / RECIPE).is_file())


def save(path: str | os.PathLike, model_name: str, variables: Any, *,
         num_classes: int, overrides: Mapping[str, Any] | None = None,
         **metadata) -> pathlib.Path:
  """Writes ``variables`` and the recipe to rebuild their model to ``path``.

  Args:
    path: a folder; it must not hold a checkpoint yet.
    model_name: registry name (``pxp_jax.models.names()``).
    variables: the model's flax variables.
    num_classes: the model's number of outputs.
    overrides: attributes passed to ``models.create`` besides ``num_classes``.
    **metadata: JSON-serialisable facts to keep with it (preprocessing,
      dataset, accuracy, the command that made it).

  Returns:
    The checkpoint folder.
  """
  path = pathlib.Path(path).resolve()
  if (path / RECIPE).exists():
    raise FileExistsError(f'{path} already holds a checkpoint; choose another '
                          'folder or delete it first')
  overrides = _from_json(_to_json(dict(overrides or {})))
  models.create(model_name, num_classes, **overrides)  # validates
  path.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / VARIABLES, jax.tree.map(np.asarray, variables))
  recipe = dict(model=model_name, num_classes=num_classes,
                overrides=_to_json(overrides), **metadata)
  if distribute.is_primary():
    (path / RECIPE).write_text(json.dumps(recipe, indent=2) + '\n')
  return path


def save_model(path: str | os.PathLike, model, variables, **metadata
               ) -> pathlib.Path:
  """``save`` of a built model: its registry name and the attributes that
  differ from that entry's (``models.describe``), e.g. a slim model's
  per-layer widths.

  Example::

    small = pxp_jax.slim(model, variables, masks)
    checkpoints.save_model('pruned', small.model, small.variables,
                           preprocess=..., dataset='digits')
    model, variables = checkpoints.load('pruned')
  """
  name, overrides = models.describe(model)
  return save(path, name, variables, num_classes=model.num_classes,
              overrides=overrides, **metadata)


def recipe(name_or_path: str | os.PathLike) -> dict[str, Any]:
  """The ``model.json`` of a checkpoint (model name, sizes, metadata)."""
  return json.loads((_resolve(name_or_path) / RECIPE).read_text())


def load(name_or_path: str | os.PathLike):
  """Loads a checkpoint as ``(model, variables)``.

  Args:
    name_or_path: a shipped checkpoint's name (``names()``, e.g.
      ``"resnet_digits"``) or the folder of any checkpoint written by ``save``.

  Returns:
    The flax module and its variables (float32 jax arrays).
  """
  path = _resolve(name_or_path)
  spec = recipe(path)
  model = models.create(spec['model'], spec['num_classes'],
                        **_from_json(spec['overrides']))
  size = spec.get('preprocess', {}).get('crop_size', 224)
  target = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(path / VARIABLES, target)
  return model, variables


def _to_json(value):
  """Overrides as JSON values: tuples become lists, numpy scalars numbers
  (a slim model's widths)."""
  if isinstance(value, Mapping):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise TypeError(f'override {value!r} ({type(value).__name__}) cannot be '
                  'written to model.json: give numbers, strings and tuples '
                  'of them')


def _from_json(value):
  """JSON lists back to the tuples model attributes are (flax modules hash
  their attributes; ``widths=(('conv1', 12), ...)``)."""
  if isinstance(value, Mapping):
    return {k: _from_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_from_json(v) for v in value)
  return value


def _resolve(name_or_path) -> pathlib.Path:
  path = pathlib.Path(name_or_path)
  if (path / RECIPE).is_file():
    return path.resolve()
  shipped = shipped_dir() / str(name_or_path)
  if (shipped / RECIPE).is_file():
    return shipped
  raise FileNotFoundError(
      f'no checkpoint {str(name_or_path)!r}: it is neither a folder holding '
      f'{RECIPE} nor a shipped checkpoint in {shipped_dir()} (shipped: '
      f'{", ".join(names()) or "none"}). Train one with experiments.train, or '
      'convert torch weights with pxp_jax.convert.')
