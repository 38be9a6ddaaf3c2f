"""Flax variables -> a torch-layout state dict (torchvision's, timm's).

The inverse of ``from_torchvision`` and ``from_timm`` for the families whose
spec exports to that source (``Spec.exports``: ResNet and VGG to
torchvision, ConvNeXt to timm), slim models included: our module paths are
the source's names (``layer1.0.conv1``, ``features.3``,
``stages.1.blocks.0.mlp.fc1``; else the spec's ``checkpoint_names`` map
them), so only the leaf names and layouts change: a conv kernel ``(kh, kw,
I, O)`` becomes ``(O, I, kh, kw)``, a dense kernel ``(I, O)`` becomes ``(O,
I)``, norms' ``scale``/``bias`` and BatchNorm's ``mean``/``var`` become
``weight``/``bias``/``running_mean``/``running_var`` (with torch's
``num_batches_tracked`` counter, 0), other parameters keep their name
(ConvNeXt's layer scale ``gamma``); the spec's ``torch_layout`` makes the
family's own changes. A slim model's state dict holds its narrower shapes;
a torch module built to those widths loads it with ``strict=True``.
"""

from __future__ import annotations

import os

import numpy as np
from flax import traverse_util

from pxp_jax.models import spec as spec_lib

TORCH_SOURCES = ('torchvision', 'timm')  # the sources of torch state dicts

_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
         ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
         ('batch_stats', 'var'): 'running_var'}


def to_torch(model, variables, source: str) -> dict[str, np.ndarray]:
  """The ``source`` (``TORCH_SOURCES``) state dict of a model whose family
  spec exports to it.

  Args:
    model: the flax module (a slim one too: ``pxp_jax.prune.slim(...).model``).
    variables: its ``{'params', 'batch_stats'}``.
    source: ``'torchvision'`` or ``'timm'``.

  Returns:
    ``{torch name: numpy array}`` in torch's layouts and the variables'
    dtype; BatchNorm layers get ``num_batches_tracked`` (int64 0).
  """
  spec = spec_lib.spec_for(model)
  if source not in TORCH_SOURCES or source not in spec.exports:
    others = ', '.join(f'convert.to_{s}' for s in spec.exports)
    raise TypeError(
        f'to_{source} exports models of the families whose spec exports to '
        f'{source}, got {type(model).__name__}'
        + (f'; export it with {others}' if others else ''))
  rename = spec.checkpoint_names.get(source, spec_lib.same_names)
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(dict(tree))
    for path, value in flat.items():
      *modules, leaf = path
      if collection != 'params' and (collection, leaf) not in _LEAF:
        raise ValueError(f'{collection}/{"/".join(path)} has no {source} '
                         'name; expected parameters and BatchNorm '
                         'statistics')
      value = np.asarray(value)
      if leaf == 'kernel':
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      module = '.'.join(modules)
      name = rename('.'.join([*modules, _LEAF.get((collection, leaf), leaf)]))
      if spec.torch_layout is not None:
        value = spec.torch_layout(model, name, value)
      out[name] = np.ascontiguousarray(value)
      if (collection, leaf) == ('batch_stats', 'mean'):
        out[rename(f'{module}.num_batches_tracked')] = np.zeros((), np.int64)
  return out


def to_torchvision(model, variables) -> dict[str, np.ndarray]:
  """The torchvision state dict of a ``models.ResNet`` or ``models.VGG``
  (``to_torch(model, variables, 'torchvision')``).

  Example::

    state = convert.to_torchvision(model, variables)
    torchvision.models.resnet18(num_classes=10).load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()})
  """
  return to_torch(model, variables, 'torchvision')


def to_timm(model, variables) -> dict[str, np.ndarray]:
  """The timm state dict of a ConvNeXt (``to_torch(model, variables,
  'timm')``): ``timm.create_model(name).load_state_dict`` takes it.

  Example::

    state = convert.to_timm(model, variables)
    timm.create_model('convnext_atto', num_classes=10).load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()})
  """
  return to_torch(model, variables, 'timm')


def save_torchvision(path: str | os.PathLike, model, variables,
                     source: str = 'torchvision') -> str:
  """Writes ``to_torch(model, variables, source)`` (torchvision's by
  default) to ``path``: a
  ``.safetensors`` file (needs the ``safetensors`` package) or an ``.npz``;
  ``convert.read_checkpoint`` and ``from_torchvision`` read both. The file
  is written whole (a temporary file renamed); its folder is created.

  Returns:
    ``path`` as a string.
  """
  path = os.fspath(os.path.expanduser(path))
  if not path.endswith(('.safetensors', '.npz')):
    raise ValueError(f'unknown export format {path!r}; write .safetensors or '
                     '.npz')
  if os.path.isdir(path):
    raise IsADirectoryError(f'cannot write {path}: it is a folder; give a '
                            'file name ending in .safetensors or .npz')
  state = to_torch(model, variables, source)
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # Written whole or not at all: a temporary file, renamed.
  partial = os.path.join(folder, f'.partial-{name}')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'writing {path} needs the safetensors package; '
                        'install it, or write an .npz') from e
    save_file(state, partial)
  else:
    np.savez(partial, **state)
  os.replace(partial, path)
  return path
