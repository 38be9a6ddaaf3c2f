"""Checkpoint files and in-memory state dicts -> a flat ``{name: numpy}`` dict.

Handles the file formats (``.safetensors``, ``.npz`` without torch; ``.pth``,
``.pt``, ``.bin``, ``.ckpt`` with it), the ``state_dict``/``model`` envelopes
and the ``module.``/``_orig_mod.`` prefixes of ``DataParallel`` and
``torch.compile``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import traverse_util


def read_checkpoint(source) -> dict[str, np.ndarray]:
  """Reads a checkpoint into a flat ``{name: numpy array}`` dict.

  Args:
    source: a mapping of names to numpy or torch arrays (nested mappings are
      joined with ``/``, as flax trees and big_vision names are), or the path
      of a ``.safetensors``, ``.npz``, ``.pth``, ``.pt``, ``.bin`` or ``.ckpt``
      file.

  Returns:
    ``{name: np.ndarray}`` with the usual wrappers removed: a
    ``{'state_dict': ...}`` or ``{'model': ...}`` envelope and the ``module.``
    and ``_orig_mod.`` prefixes of ``DataParallel`` and ``torch.compile``.
  """
  if isinstance(source, (str, os.PathLike)):
    source = _read_file(os.fspath(source))
  if not isinstance(source, Mapping):
    raise TypeError(f'expected a mapping of names to arrays or a file path, '
                    f'got {type(source).__name__}')
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(source.get(wrapper), Mapping):
      source = source[wrapper]
      break
  flat = {}
  for key, value in traverse_util.flatten_dict(
      dict(source), is_leaf=lambda _, v: not isinstance(v, Mapping)).items():
    flat['/'.join(map(str, key))] = _to_numpy(value)
  # DataParallel's and torch.compile's wrappers prefix every name
  for wrapper in ('module.', '_orig_mod.'):
    if flat and all(k.startswith(wrapper) for k in flat):
      flat = {k[len(wrapper):]: v for k, v in flat.items()}
  return flat


def _read_file(path: str):
  """The mapping a weights file holds; a missing, unknown or unreadable file
  is an error naming it. safetensors and torch are imported only for their
  formats."""
  if not path.endswith(('.safetensors', '.npz', '.pth', '.pt', '.bin',
                        '.ckpt')):
    raise ValueError(f'unknown checkpoint format {path!r}; expected '
                     '.safetensors, .npz, .pth, .pt, .bin or .ckpt')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no weights file {path}')
  try:
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file
      return load_file(path)
    if path.endswith('.npz'):
      with np.load(path, allow_pickle=False) as f:
        return dict(f)
    try:
      import torch
    except ImportError as e:
      raise ImportError(f'reading {path} needs torch; install it, or save '
                        'the weights as .safetensors or .npz') from e
    return torch.load(path, map_location='cpu', weights_only=True)
  except ImportError:
    raise
  except Exception as error:  # each format's reader has its own errors
    first = str(error).strip().splitlines()[0] if str(error).strip() else ''
    torch_only = ('' if path.endswith(('.safetensors', '.npz')) else
                  ' torch files are read with weights_only=True: tensors '
                  'and plain containers only.')
    raise ValueError(
        f'cannot read {path} as a {os.path.splitext(path)[1]} weights file '
        f'({type(error).__name__}: {first[:200]}); is it complete (a '
        f'download cut short?) and of the format its name says?{torch_only}'
    ) from error


def _to_numpy(value) -> np.ndarray:
  """A numpy copy of a numpy or torch array (torch floats as float32)."""
  if hasattr(value, 'detach'):  # a torch tensor; bfloat16 has no numpy twin
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)
