"""A job's config checked when the job starts, before any data is read or
any program compiled.

A job first builds the objects its config describes (``pruning``: the
few-class task, the draws, the rates; the job's own fields); each checks its
arguments (``pxp_jax.checks.ArgumentError``) and ``as_config`` words the
error as the config field, ``--config.FIELD=value``, its value and the fix.
What stays here is what no object owns: the fields that only the configs
have (counts, choices, the training's numbers) and the checks across
fields. Checks that need the model or the data (classes the model has,
examples per class) are made by the same objects when ``jobs.task`` builds
them with the model and reads the data.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import pathlib
from collections.abc import Callable, Sequence

from pxp_jax import checks, data, distribute
from pxp_jax.checks import show as _show
from pxp_jax.jobs import analyses
from pxp_jax.lrp import attribution, composites, faithfulness
from pxp_jax.models import structure
from pxp_jax.prune import criteria as criteria_lib
from pxp_jax.prune import ranking

OPTIMIZERS = ('sgd', 'adamw')
# The iterative job's criteria: integrated gradients is one-shot only.
ITERATIVE_CRITERIA = ('lrp', 'weight', 'gradient', 'taylor', 'random')


@contextlib.contextmanager
def as_config(field: str | None = None, value=None, **renamed: str):
  """Errors of the objects built inside, worded as the config's.

  An ``ArgumentError`` names each argument ``a`` as ``--config.FIELD``,
  the field being ``renamed.get(a, a)``; with ``field``, any other
  ``ValueError`` is prefixed ``--config.FIELD=value: `` (a split name the
  data do not have).
  """
  try:
    yield
  except checks.ArgumentError as error:
    raise ValueError(error.worded(
        lambda name: f'--config.{renamed.get(name, name)}')) from None
  except ValueError as error:
    if field is None:
      raise
    raise ValueError(f'--config.{field}={value!r}: {error}') from None


def pruning(config) -> None:
  """The fields of ``options.pruning_fields`` (rates, random seeds and draws
  where the config has them), of ``options.scale_fields`` and of
  ``options.faithfulness_fields`` where present: the task's objects built
  without the model. The search can call this on its config: fields a
  config lacks are skipped."""
  _name(config, 'model')
  for field in ('reference_split', 'eval_split'):
    if field in config:
      _name(config, field)
  with as_config():
    data.FewClass(tuple(config.classes), other_classes=config.other_classes)
    data.Draw(config.n_per_class, config.seed,
              config.get('holdout_per_class', 0))
    if 'rates' in config:
      ranking.check_rates(config.rates)
    if config.units:
      checks.choice('units', config.units, structure.UNIT_TYPES,
                    empty='the family\'s')
    if 'precision' in config:
      checks.choice('precision', config.precision, attribution.PRECISIONS)
  _count(config, 'class_draw', 0, 'classes drawn at random, 0 = off')
  one_class_choice(config.classes, config.get('class_draw', 0))
  _count(config, 'batch_size', 1, 'reference samples per relevance pass')
  _count(config, 'eval_batch_size', 1, 'images per evaluation batch')
  _count(config, 'random_seeds', 1, 'seeds of the random baseline')
  _count(config, 'draws', 1, 'repeats with seeds seed, seed + 1, ...')
  if 'mesh' in config:
    _mesh(config.mesh)
  if 'faithfulness' in config:
    _faithfulness(config)
  if 'composite' in config:
    _composite(config)


def prune(config) -> None:
  """The prune job's config (``experiments/configs/prune.py``)."""
  pruning(config)
  names = _criteria(config, tuple(criteria_lib.REGISTRY))
  _count(config, 'ig_steps', 1, 'integrated gradients path points')
  _choice(config, 'ig_form', criteria_lib.IG_FORMS)
  _count(config, 'heatmaps', 0, 'LRP heatmaps drawn, 0 = none')
  _count(config, 'stability', 0, 'images of the stability analysis, 0 = off')
  if config.stability and 'lrp' not in names:
    raise ValueError(f'--config.stability={config.stability}: stability '
                     'needs the lrp criterion (its masks prune the model), '
                     f'but --config.criteria={_show(tuple(names))}: add lrp '
                     'or set --config.stability=0')
  _count(config, 'fine_tune_steps', 0, 'fine-tuning steps, 0 = off')
  if config.fine_tune_steps:
    _fine_tuning(config)
    _one_of_rates(config, 'fine_tune_rate')
  unknown = [c for c in config.slim if c not in names]
  if unknown:
    raise ValueError(f'--config.slim names {unknown}, which are not among '
                     f'--config.criteria={_show(tuple(names))}; slim some of '
                     'them or set --config.slim="()"')
  if config.slim:
    _count(config, 'size_batch', 1, 'images per timed forward pass')
    _count(config, 'size_repeats', 1, 'timed passes per model')
  if config.export_rate:
    if 'lrp' not in names:
      raise ValueError(f'--config.export_rate={config.export_rate} exports '
                       'the model pruned by lrp, but lrp is not among '
                       f'--config.criteria={tuple(names)}: add lrp or set '
                       '--config.export_rate=0')
    _one_of_rates(config, 'export_rate')


def iterative(config) -> None:
  """The iterative job's config (``experiments/configs/iterative.py``)."""
  pruning(config)
  _criteria(config, ITERATIVE_CRITERIA)
  for field in ('target_rate', 'step'):
    _fraction(config, field)
  if config.step > config.target_rate:
    raise ValueError(f'--config.step={config.step} exceeds '
                     f'--config.target_rate={config.target_rate}: each round '
                     'prunes step of the units up to target_rate; make step '
                     'at most target_rate')
  _count(config, 'fine_tune_steps', 0, 'fine-tuning steps per round')
  _fine_tuning(config)


def train(config) -> None:
  """The training config (``experiments/configs/train.py``)."""
  _name(config, 'model')
  _name(config, 'dataset')
  for name in ('train', 'validation', 'test'):
    value = config.splits.get(name)
    if not isinstance(value, str) or not value:
      raise ValueError(f'--config.splits.{name}={value!r} must name a split '
                       "of the dataset, e.g. 'train'")
  _count(config, 'num_classes', 2, 'classes of the dataset')
  _count(config, 'seed', 0, 'the initialisation and shuffling seed')
  _count(config, 'num_epochs', 1, 'training epochs')
  _count(config, 'warmup_epochs', 0, 'epochs of linear warm-up')
  if config.warmup_epochs > config.num_epochs:
    raise ValueError(f'--config.warmup_epochs={config.warmup_epochs} exceeds '
                     f'--config.num_epochs={config.num_epochs}: the learning '
                     'rate would never reach its peak; make it at most '
                     'num_epochs')
  _count(config, 'batch_size', 1, 'training images per step')
  _count(config, 'eval_batch_size', 1, 'images per evaluation batch')
  _choice(config, 'optimizer', OPTIMIZERS)
  _rate(config, 'learning_rate')
  _finite(config, 'momentum', 0.0, 1.0, 'in [0, 1)', upper_open=True)
  _finite(config, 'weight_decay', 0.0, math.inf, '>= 0')
  _finite(config, 'label_smoothing', 0.0, 1.0, 'in [0, 1)', upper_open=True)
  _count(config, 'augment_shift', 0, 'pixels of random translation, 0 = off')
  if 'mesh' in config:
    _mesh(config.mesh)


def for_job(job: Callable) -> Callable:
  """The check of ``job``'s config, which ``pxp_jax.jobs.draws`` runs
  before claiming the workdir of several draws (a single run is checked by
  the job itself): the ``check`` a job carries (``workdir.exclusive``), else
  the shared ``pruning`` fields (the search checks the rest itself)."""
  return getattr(job, 'check', pruning)


def rates(values, field: str = 'rates') -> list[float]:
  """Pruning rates as floats (``ranking.check_rates``), an error naming
  ``--config.FIELD``."""
  with as_config(rates=field):
    return ranking.check_rates(values)


def one_class_choice(classes, class_draw) -> None:
  """``classes`` or ``class_draw`` (>= 2) choose the few-class task, not
  both."""
  if not class_draw:
    return
  if class_draw < 2:
    raise ValueError(f'--config.class_draw={class_draw} must be >= 2 '
                     '(with one class every pruned model is 100% accurate), '
                     'or 0 for no draw')
  if tuple(classes):
    raise ValueError(f'--config.classes={_show(tuple(classes))} and '
                     f'--config.class_draw={class_draw} both choose the '
                     'classes; give one of them')


# Helpers ----------------------------------------------------------------------


def _count(config, field: str, low: int, meaning: str) -> None:
  """An integer ``>= low`` where the config has the field."""
  if field in config:
    with as_config():
      checks.count(field, config[field], low, meaning)


def _finite(config, field: str, low: float, high: float, span: str, *,
            upper_open: bool = False, lower_open: bool = False) -> None:
  value = config[field]
  inside = (checks.is_real(value)
            and (value > low if lower_open else value >= low)
            and (value < high if upper_open else value <= high))
  if not inside:
    raise ValueError(f'--config.{field}={value!r} must be a finite number '
                     f'{span}')


def _rate(config, field: str) -> None:
  """A learning rate: finite and positive."""
  _finite(config, field, 0.0, math.inf, '> 0, e.g. 1e-3', lower_open=True)


def _fraction(config, field: str) -> None:
  _finite(config, field, 0.0, 1.0, 'in (0, 1), a share of the units',
          lower_open=True, upper_open=True)


def _choice(config, field: str, choices: Sequence[str]) -> None:
  with as_config():
    checks.choice(field, config[field], choices)


def _name(config, field: str) -> None:
  value = config[field]
  if not isinstance(value, str) or not value:
    raise ValueError(f'--config.{field}={value!r} must be a non-empty name')


def _composite(config) -> None:
  """A preset name or a JSON file (which ``jobs.task`` reads), not both."""
  name, path = config.composite, config.get('composite_json', '')
  if name and path:
    raise ValueError(f'--config.composite={name!r} and '
                     f'--config.composite_json={path!r} both choose the '
                     'composite; give one of them')
  if name and name not in composites.PRESETS:
    raise ValueError(f'--config.composite={name!r} is not a preset; use one '
                     f'of {", ".join(sorted(composites.PRESETS))}, or \'\' for '
                     'the family\'s default')
  if path and not pathlib.Path(path).is_file():
    raise FileNotFoundError(f'--config.composite_json={path} does not exist; '
                            'give the JSON file a search wrote '
                            '(best_composite.json)')


def _criteria(config, known: Sequence[str]) -> list[str]:
  names = list(config.criteria)
  shown = f'--config.criteria={_show(tuple(names))}'
  if not names:
    raise ValueError(f'{shown} names no criterion; use some of '
                     f'{", ".join(known)}')
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'{shown}: unknown {unknown}; use some of '
                     f'{", ".join(known)}')
  if len(set(names)) != len(names):
    raise ValueError(f'{shown} names a criterion twice; write '
                     f'{_show(tuple(dict.fromkeys(names)))}')
  return names


def _fine_tuning(config) -> None:
  _rate(config, 'fine_tune_lr')
  _count(config, 'fine_tune_batch', 1, 'training images per fine-tuning step')
  if 'weight_decay' in config:
    _finite(config, 'weight_decay', 0.0, math.inf, '>= 0')
  if 'fine_tune_rate' in config:
    _fraction(config, 'fine_tune_rate')


def _one_of_rates(config, field: str) -> None:
  value = config[field]
  if not checks.is_real(value) or float(value) not in [
      float(r) for r in config.rates]:
    raise ValueError(f'--config.{field}={value!r}: {field} {value} is not '
                     f'one of --config.rates={_show(tuple(config.rates))}; '
                     'choose one of them')


def _mesh(mesh) -> None:
  sizes = dict(mesh)
  unknown = sorted(set(sizes) - set(distribute.AXES))
  if unknown:
    raise ValueError(f'--config.mesh has axes {unknown}; its axes are '
                     f'{distribute.AXES}')
  for axis, size in sizes.items():
    if (not isinstance(size, numbers.Integral) or isinstance(size, bool)
        or not (size >= 1 or size == -1)):
      raise ValueError(f'--config.mesh.{axis}={size!r} must be a device '
                       'count >= 1, or -1 for the devices the other axes '
                       'leave')
  if list(sizes.values()).count(-1) > 1:
    raise ValueError(f'--config.mesh={sizes}: only one axis may be -1')


def _faithfulness(config) -> None:
  _count(config, 'faithfulness', 0, 'images of region perturbation, 0 = off')
  if not config.faithfulness:
    return
  options = config.perturbation
  with as_config():
    checks.count('perturbation.patch_size', options.patch_size, 1,
                 'pixels of a square patch')
    checks.count('perturbation.steps', options.steps, 0,
                 'curve points, 0 = one patch per step')
    checks.choice('perturbation.order', options.order, faithfulness.ORDERS)
    checks.choice('perturbation.baseline', options.baseline,
                  analyses.BASELINES)
