"""Flax ResNet and VGG variables -> a torchvision-layout state dict.

The inverse of ``from_torchvision`` for the CNNs, slim ones included: our
module paths are torchvision's names (``layer1.0.conv1``,
``layer2.0.downsample.0``, ``features.3``, ``classifier.0``), so only the
leaf names and layouts change: a conv kernel ``(kh, kw, I, O)`` becomes
``(O, I, kh, kw)``, a dense kernel ``(I, O)`` becomes ``(O, I)``, BatchNorm's
``scale``/``bias``/``mean``/``var`` become ``weight``/``bias``/
``running_mean``/``running_var`` (with torch's ``num_batches_tracked``
counter, 0). A slim model's state dict holds its narrower shapes; a torch
module built to those widths loads it with ``strict=True``.
"""

from __future__ import annotations

import os

import numpy as np
from flax import traverse_util

from pxp_jax.models import resnet, vgg

_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
         ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
         ('batch_stats', 'var'): 'running_var'}


def to_torchvision(model, variables) -> dict[str, np.ndarray]:
  """The torchvision state dict of a ``models.ResNet`` or ``models.VGG``.

  Args:
    model: the flax module (a slim one too: ``pxp_jax.prune.slim(...).model``).
    variables: its ``{'params', 'batch_stats'}``.

  Returns:
    ``{torch name: numpy array}`` in torch's layouts and the variables'
    dtype; BatchNorm layers get ``num_batches_tracked`` (int64 0).

  Example::

    state = convert.to_torchvision(model, variables)
    torchvision.models.resnet18(num_classes=10).load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()})
  """
  if not isinstance(model, (resnet.ResNet, vgg.VGG)):
    raise TypeError(
        f'to_torchvision exports ResNets and VGGs, got {type(model).__name__}; '
        'export a ViT with convert.to_big_vision')
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(dict(tree))
    for path, value in flat.items():
      *modules, leaf = path
      if (collection, leaf) not in _LEAF:
        raise ValueError(f'{collection}/{"/".join(path)} has no torchvision '
                         'name; expected kernels, biases, BatchNorm scales '
                         'and statistics')
      value = np.asarray(value)
      if leaf == 'kernel':
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      module = '.'.join(modules)
      out[f'{module}.{_LEAF[collection, leaf]}'] = np.ascontiguousarray(value)
      if (collection, leaf) == ('batch_stats', 'mean'):
        out[f'{module}.num_batches_tracked'] = np.zeros((), np.int64)
  return out


def save_torchvision(path: str | os.PathLike, model, variables) -> str:
  """Writes ``to_torchvision(model, variables)`` to ``path``: a
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
  state = to_torchvision(model, variables)
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
