"""A workdir belongs to one config: resume the same, refuse a different one."""

from __future__ import annotations

import json
import pathlib

from pxp_jax import distribute


def claim(workdir: pathlib.Path, config) -> None:
  """Records ``config`` in ``workdir/config.json`` (process 0), or checks it
  is the one recorded there (every process); a different config is an
  error and nothing is written."""
  saved = pathlib.Path(workdir) / 'config.json'
  current = json.loads(config.to_json_best_effort(sort_keys=True))
  if saved.exists():
    previous = json.loads(saved.read_text())
    if previous != current:
      changed = sorted(k for k in set(previous) | set(current)
                       if previous.get(k) != current.get(k))
      raise ValueError(
          f'{workdir} holds results of a different config (differs in: '
          f'{", ".join(changed)}); nothing was overwritten. Use a new '
          '--workdir, or the same config to resume.')
  elif distribute.is_primary():
    saved.write_text(json.dumps(current, indent=2, sort_keys=True) + '\n')
