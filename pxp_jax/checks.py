"""A bad argument's error, worded once for the library and for the jobs.

An object checks its own arguments when it is built and raises an
``ArgumentError``: its message begins ``name=value`` and names arguments as
``{name}``. Called from Python the message reads ``n_per_class=0 must be an
integer >= 1 (...)``; a job words the same error as its config field,
``--config.n_per_class=0 must be ...`` (``pxp_jax.jobs.validate.as_config``),
so no check is written twice.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence


class ArgumentError(ValueError):
  """A bad argument ``name=value`` and what is wrong with it.

  ``problem`` follows the value (``' must be ...'``, ``': ...'``) and may
  name arguments as ``{name}``; ``worded`` shows each as a job's field.
  """

  def __init__(self, name: str, value, problem: str):
    self.name, self.value, self.problem = name, value, problem
    super().__init__(self.worded())

  def worded(self, name: Callable[[str], str] = lambda a: a) -> str:
    """The message with each argument ``a`` written ``name(a)``."""
    text = '{' + self.name + '}=' + show(self.value) + self.problem
    return re.sub(r'\{([\w.]+)\}', lambda m: name(m[1]), text)


def show(value) -> str:
  """A value as it is written on the command line: sequences as tuples,
  numpy scalars as numbers."""
  if isinstance(value, (list, tuple)):
    inner = ', '.join(show(v) for v in value)
    return f'({inner},)' if len(value) == 1 else f'({inner})'
  if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
    try:
      value = value.item()
    except (TypeError, ValueError):
      pass
  return repr(value)


def is_real(value) -> bool:
  """A finite number that is not a bool."""
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def count(name: str, value, low: int, meaning: str) -> int:
  """``value`` as an integer ``>= low`` (booleans are not counts)."""
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
      or value < low):
    raise ArgumentError(name, value,
                        f' must be an integer >= {low} ({meaning})')
  return int(value)


def choice(name: str, value, choices: Sequence[str],
           empty: str | None = None) -> str:
  """``value`` if it is one of ``choices`` (``empty``: what '' means)."""
  if value not in choices:
    also = f", or '' for {empty} default" if empty else ''
    raise ArgumentError(name, value, f': {name} must be one of '
                        f'{", ".join(choices)}{also}')
  return value
