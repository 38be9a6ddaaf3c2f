"""Model checkpoints on disk: orbax-saved variables plus the model's recipe.

A checkpoint is a folder::

  model.json     {"model": registry name, "num_classes": ..., "overrides": {...},
                  "preprocess": {...}, ...metadata such as the test accuracy}
  variables/     the flax variables, written by orbax's StandardCheckpointer

``load("resnet_digits")`` finds the checkpoints shipped in the package's
``shipped/`` folder (or in ``$PXP_JAX_CHECKPOINTS``); ``load(path)`` reads
any such folder. A slim model (``pxp_jax.prune.slim``) keeps its per-layer widths
in ``overrides`` (ResNet ``widths``, VGG ``config`` and ``hidden``, ViT
``block_heads`` and ``block_mlp_dims``); ``save_model`` finds its registry
name and overrides itself.

A folder holds a checkpoint once its ``model.json`` is there: ``save``
writes it last, whole (a temporary file renamed), so an interrupted save
leaves no ``model.json``, and saving to that folder again replaces what it
left. ``save`` refuses a folder that holds a checkpoint unless asked to
``overwrite`` it, and checks the variables against the recipe first, as
``load`` does: missing and unexpected names and wrong shapes are listed.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pxp_jax import distribute, files, models

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
         overwrite: bool = False, **metadata) -> pathlib.Path:
  """Writes ``variables`` and the recipe to rebuild their model to ``path``.

  Args:
    path: a folder (``~`` expanded); it must not hold a checkpoint yet,
      unless ``overwrite``. What an interrupted save left there (variables
      without ``model.json``) is replaced.
    model_name: registry name (``pxp_jax.models.names()``).
    variables: the model's flax variables.
    num_classes: the model's number of outputs.
    overrides: attributes passed to ``models.create`` besides ``num_classes``.
    overwrite: replace a checkpoint already in ``path``.
    **metadata: JSON-serialisable facts to keep with it (preprocessing,
      dataset, accuracy, the command that made it).

  Returns:
    The checkpoint folder.
  """
  path = pathlib.Path(path).expanduser().resolve()
  if path.exists() and not path.is_dir():
    raise FileExistsError(f'cannot save a checkpoint to {path}: it is a file; '
                          'give a folder path')
  if (path / RECIPE).exists() and not overwrite:
    raise FileExistsError(f'{path} already holds a checkpoint; choose another '
                          'folder, delete it first, or pass overwrite=True')
  overrides = _from_json(_to_json(dict(overrides or {})))
  model = models.create(model_name, num_classes, **overrides)  # validates
  size = metadata.get('preprocess', {}).get('crop_size', 224)
  variables = jax.tree.map(np.asarray, variables)
  try:
    expected = _shapes(_target(model, size))
  except Exception:  # pylint: disable=broad-except
    expected = None  # not built at this size: load says so, with preprocess
  _check(expected or _shapes(variables), _shapes(variables),
         f'the variables given to save {path} do not fit model '
         f'{model_name!r} (num_classes={num_classes}, overrides '
         f'{_to_json(overrides)})', 'pass the model_name, num_classes and '
         'overrides the variables were made with (save_model finds them)')
  if distribute.is_primary():
    path.mkdir(parents=True, exist_ok=True)
    (path / RECIPE).unlink(missing_ok=True)  # overwrite: no longer whole
    for stale in path.glob(f'{VARIABLES}*'):  # an interrupted save's
      shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
  distribute.sync('checkpoints.save')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / VARIABLES, variables)
  recipe = dict(model=model_name, num_classes=num_classes,
                overrides=_to_json(overrides), **metadata)
  if distribute.is_primary():
    files.write_json(path / RECIPE, recipe, sort_keys=False)
  return path


def save_model(path: str | os.PathLike, model, variables, **metadata
               ) -> pathlib.Path:
  """``save`` of a built model: its registry name and the attributes that
  differ from that entry's (``models.describe``), e.g. a slim model's
  per-layer widths.

  Example::

    small = pxp_jax.prune.slim(model, variables, masks)
    checkpoints.save_model('pruned', small.model, small.variables,
                           preprocess=..., dataset='digits')
    model, variables = checkpoints.load('pruned')
  """
  name, overrides = models.describe(model)
  return save(path, name, variables, num_classes=model.num_classes,
              overrides=overrides, **metadata)


def recipe(name_or_path: str | os.PathLike) -> dict[str, Any]:
  """The ``model.json`` of a checkpoint (model name, sizes, metadata)."""
  path = _resolve(name_or_path) / RECIPE
  fix = (f'restore {path} from where the checkpoint came from, or save the '
         'checkpoint again (checkpoints.save_model)')
  spec = files.read_json(path, fix)
  missing = [k for k in ('model', 'num_classes') if k not in spec]
  if missing:
    raise ValueError(f'{path} lacks {", ".join(map(repr, missing))} (the '
                     f'model\'s registry name and outputs); {fix}')
  if not isinstance(spec.get('overrides', {}), dict):
    raise ValueError(f'{path}: "overrides" must be an object of model '
                     f'attributes, got {spec["overrides"]!r}; {fix}')
  return spec


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
                        **_from_json(spec.get('overrides', {})))
  size = spec.get('preprocess', {}).get('crop_size', 224)
  target = _target(model, size)
  stored = path / VARIABLES
  damaged = (f'the checkpoint is damaged: copy {path} again, or save it '
             'again from its source')
  if not stored.is_dir():
    raise FileNotFoundError(f'{path} has a {RECIPE} but no {VARIABLES}/ '
                            f'folder; {damaged}')
  try:
    with ocp.StandardCheckpointer() as ckptr:
      found = ckptr.metadata(stored)
    found = _shapes(getattr(found, 'item_metadata', found))
  except Exception as e:  # orbax and json errors alike
    raise ValueError(f'cannot read {stored} ({_first_line(e)}); {damaged}'
                     ) from e
  if not found:
    raise ValueError(f'cannot read {stored} (no arrays in its metadata); '
                     f'{damaged}')
  _check(_shapes(target), found,
         f'{path / RECIPE} (model {spec["model"]!r}, num_classes '
         f'{spec["num_classes"]}, overrides {spec.get("overrides", {})}) does '
         f'not describe the variables in {stored}',
         f'correct {RECIPE} to the model the variables were saved with, or '
         'save the checkpoint again with checkpoints.save_model')
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(stored, target)
  except Exception as e:  # tensorstore errors of damaged array files
    raise ValueError(f'cannot read {stored} ({_first_line(e)}); {damaged}'
                     ) from e
  return model, variables


def _target(model, size: int):
  """The abstract variables of ``model`` on ``size`` x ``size`` images."""
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, size, size, 3), jnp.float32))


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """``'collection/module/leaf'`` -> shape of a variables tree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in keys):
          tuple(getattr(v, 'shape', ())) for keys, v in flat}


def _check(expected: Mapping, found: Mapping, what: str, fix: str) -> None:
  """Lists missing and unexpected names and wrong shapes (``found`` against
  ``expected``, both name -> shape), if any, in one error."""
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  shapes = [f'{k} {found[k]} (expected {expected[k]})'
            for k in sorted(set(expected) & set(found))
            if tuple(found[k]) != tuple(expected[k])]
  if not (missing or unexpected or shapes):
    return
  lines = [f'{what}:']
  for title, names in (('missing', missing), ('unexpected', unexpected),
                       ('wrong shape', shapes)):
    if names:
      more = f', ... ({len(names)} in all)' if len(names) > 8 else ''
      lines.append(f'  {title}: {", ".join(names[:8])}{more}')
  raise ValueError('\n'.join(lines) + f'\n{fix}')


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


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
  path = pathlib.Path(name_or_path).expanduser()
  if (path / RECIPE).is_file():
    return path.resolve()
  shipped = shipped_dir() / str(name_or_path)
  if (shipped / RECIPE).is_file():
    return shipped
  if path.is_dir():
    partial = any(path.glob(f'{VARIABLES}*'))
    raise FileNotFoundError(
        f'{path.resolve()} holds no {RECIPE}, so it is not a checkpoint'
        + (f' (its {VARIABLES}/ is what an interrupted save left: save it '
           'again)' if partial else '; give a folder written by '
           'checkpoints.save, or a shipped name'))
  if path.exists():
    raise FileNotFoundError(f'{path.resolve()} is a file; a checkpoint is a '
                            f'folder holding {RECIPE} and {VARIABLES}/')
  close = difflib.get_close_matches(str(name_or_path), names(), n=1)
  if close:
    raise FileNotFoundError(f'no checkpoint {str(name_or_path)!r}; did you '
                            f'mean {close[0]!r}? (shipped: '
                            f'{", ".join(names())})')
  raise FileNotFoundError(
      f'no checkpoint {str(name_or_path)!r}: it is neither a folder holding '
      f'{RECIPE} nor a shipped checkpoint in {shipped_dir()} (shipped: '
      f'{", ".join(names()) or "none"}). Train one with pxp-train, or '
      'convert torch weights with pxp_jax.convert.')
