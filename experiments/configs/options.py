"""The ``key=value,flag`` argument after a config file's name."""


def parse(arg: str) -> dict[str, str | bool]:
  """``'model=vit_digits,runlocal'`` -> ``{'model': 'vit_digits',
  'runlocal': True}``."""
  return dict(kv.split('=', 1) if '=' in kv else (kv, True)
              for kv in arg.split(',') if kv)
