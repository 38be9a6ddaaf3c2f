"""JSON files as the jobs and checkpoints keep them: read with an error
that names the file and the fix, written whole or not at all."""

from __future__ import annotations

import json
import os
import pathlib


def read_json(path: pathlib.Path, fix: str) -> dict:
  """The JSON object in ``path``; an error naming the file and ``fix`` if
  it is not one (a folder, cut short, not ``{...}``)."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise IsADirectoryError(f'{path} is a folder, not a JSON file; {fix}')
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is damaged (not valid JSON: {e}); {fix}'
                     ) from None
  if not isinstance(value, dict):
    raise ValueError(f'{path} holds a JSON {type(value).__name__}, not an '
                     f'object {{...}}; {fix}')
  return value


def write_json(path: pathlib.Path, value, sort_keys: bool = True) -> None:
  """Writes ``value`` to ``path`` whole or not at all (a temporary file
  renamed), so a killed job never leaves it cut short."""
  path = pathlib.Path(path)
  partial = path.with_name(f'.{path.name}.partial')
  partial.write_text(json.dumps(value, indent=2, sort_keys=sort_keys) + '\n')
  os.replace(partial, path)
