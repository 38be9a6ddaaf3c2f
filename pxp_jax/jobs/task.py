"""The pruning task, built once from a config and shared by the jobs.

A ``Task`` holds what the prune job, the search and the evaluate binary all
need: the model and its variables, its family spec and structure, the data
(splits, the few-class subset, preprocessing and input bounds), the seeded
reference samples, the units to prune, the default composite, the criteria
by name, and the accuracy of masked models over a split.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import numpy as np

from pxp_jax import checkpoints, composites, data, distribute, files
from pxp_jax.models import structure
from pxp_jax.models import spec as spec_lib
from pxp_jax.prune import criteria, metrics, sweep


@dataclasses.dataclass
class Task:
  """A model, its data and reference samples, and the units to prune.

  Attributes (the config fields of ``experiments/configs``):
    model_name: a checkpoint name or folder.
    dataset, data_dir: the data ('' = the checkpoint's dataset, TFDS's
      default folder).
    classes: the few-class task (() = all classes).
    class_draw: > 0 draws that many of the model's classes at random with
      ``seed`` instead (the PXP reference's few-class tasks; ``classes``
      must then be empty).
    reference_split, n_per_class, seed: the seeded reference samples.
    holdout_per_class: evaluating on the reference split always leaves the
      reference samples out; > 0 also keeps only that many examples of
      each class there (seeded): a search's validation images taken from
      the train split, disjoint from the reference samples.
    units_type: filters, neurons or heads ('' = the family's default).
    absolute_tokens: LRP's |R| per token rather than per sample (unsigned
      ranking only).
    batch_size, eval_batch_size: samples per relevance pass and per
      evaluation batch.
    other_classes: how a few-class task drops the other classes:
      ``'excluded'`` (their logits are -inf: the argmax runs over the chosen
      classes) or ``'zeroed'`` (the PXP reference's: their rows of the
      classifier's kernel and bias are zero, so their logits are 0 and the
      argmax runs over all classes; every criterion sees that model).
    mesh: device mesh axis sizes (``pxp_jax.distribute``; None: data-parallel
      over every device).
    precision: ``float32`` or ``bfloat16`` relevance passes (scores
      accumulate in float32).
    remat: rematerialise each block's activations in relevance passes.
  """

  model_name: str
  dataset: str = ''
  data_dir: str = ''
  classes: Sequence[int] = ()
  reference_split: str = 'train'
  n_per_class: int = 10
  seed: int = 0
  units_type: str = ''
  absolute_tokens: bool = True
  batch_size: int = 32
  eval_batch_size: int = 512
  other_classes: str = 'excluded'
  class_draw: int = 0
  holdout_per_class: int = 0
  mesh: Mapping[str, int] | None = None
  precision: str = 'float32'
  remat: bool = False

  def __post_init__(self):
    self.model, self.variables = checkpoints.load(self.model_name)
    self.recipe = checkpoints.recipe(self.model_name)
    self.num_classes = self.recipe['num_classes']
    self.preprocess = data.Preprocess(**self.recipe['preprocess'])
    self.dataset = self.dataset or self.recipe['dataset']
    if self.class_draw:
      if self.classes:
        raise ValueError(f'--config.classes={tuple(self.classes)} and '
                         f'--config.class_draw={self.class_draw} both choose '
                         'the classes; give one of them')
      self.classes = draw_classes(self.num_classes, self.class_draw, self.seed)
    self.classes = _checked_classes(self.classes, self.num_classes)
    self.spec = spec_lib.spec_for(self.model)
    size = self.preprocess.crop_size
    self.found = structure.trace(self.model, self.variables,
                                 (1, size, size, 3))
    if self.other_classes not in OTHER_CLASSES:
      raise ValueError(f'--config.other_classes={self.other_classes!r} is '
                       f'not one of {", ".join(OTHER_CLASSES)}')
    if self.classes and self.other_classes == 'zeroed':
      self.variables = zero_other_classes(
          self.variables, self.spec.classifier or self.found.output_layer,
          self.classes)
    self.units_type = self.units_type or self.spec.default_units(self.found)
    have = sorted({u.type for u in self.found.units().values()})
    if self.units_type not in have:
      raise ValueError(f'--config.units={self.units_type!r}: '
                       f'{self.model_name} has no {self.units_type}; its units '
                       f'are {", ".join(have)} (or \'\' for the family\'s)')
    self.device_mesh = distribute.make_mesh(self.mesh)
    self.variables = distribute.replicate(self.variables, self.device_mesh)
    self._references, self._samples, self._arrays = {}, {}, {}
    self._sources = {}

  @classmethod
  def from_config(cls, config) -> 'Task':
    """The task of a prune or search config (``experiments/configs``)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    renamed = dict(model='model_name', units='units_type')
    chosen = {renamed.get(k, k): v for k, v in config.items()
              if renamed.get(k, k) in fields}
    chosen['classes'] = tuple(chosen.get('classes', ()))
    if 'mesh' in chosen:
      chosen['mesh'] = dict(chosen['mesh'])
    return cls(**chosen)

  # Data ----------------------------------------------------------------------

  def split(self, name: str, field: str | None = None):
    """The data source of split ``name``; an unknown split's error names
    the config ``field`` that gave it."""
    try:
      return data.load(self.dataset, name, data_dir=self.data_dir or None)
    except ValueError as error:
      if field is None:
        raise
      raise ValueError(f'--config.{field}={name!r}: {error}') from None

  def reference_indices(self, n_per_class: int | None = None) -> np.ndarray:
    """Indices into the reference split of the seeded reference samples,
    ``n_per_class`` of each class (default: the task's)."""
    n = n_per_class or self.n_per_class
    if n not in self._references:
      source = self.split(self.reference_split, 'reference_split')
      _check_per_class(data.labels_of(source), self._class_list(source), n,
                       'n_per_class', f'{self.dataset}:{self.reference_split}')
      self._references[n] = data.reference_samples(
          source, n, seed=self.seed, classes=self.classes)
    return self._references[n]

  def references(self, n_per_class: int | None = None):
    """The reference samples ``(images, labels)``: images in memory, or a
    ``data.Images`` read batch by batch when they would take over
    ``IN_MEMORY_BYTES``."""
    n = n_per_class or self.n_per_class
    if n not in self._samples:
      indices = self.reference_indices(n)
      source = self.split(self.reference_split)
      images = data.Images(source, self.preprocess, indices)
      if np.prod(images.shape) * 4 <= IN_MEMORY_BYTES:
        images = images[:]
      self._samples[n] = (images,
                          data.labels_of(source)[indices].astype(np.int32))
    return self._samples[n]

  def source(self, split: str):
    """The examples of ``split`` that evaluation reads: those of the task's
    classes; on the reference split, none of the reference samples drawn so
    far, and ``holdout_per_class`` of each class if set (built once per
    split and set of reference draws)."""
    if split == self.reference_split:
      self.reference_indices()  # the task's own draw is always left out
    key = (split, tuple(sorted(self._references)))
    if key not in self._sources:
      self._sources[key] = self._source(split)
    return self._sources[key]

  def _source(self, split: str):
    source = self.split(split)
    labels = data.labels_of(source)
    keep = (np.ones(len(labels), bool) if self.classes is None
            else np.isin(labels, self.classes))
    if split == self.reference_split:
      for drawn in self._references.values():
        keep[drawn] = False
      if self.holdout_per_class:
        rest = data.Subset(source, np.flatnonzero(keep))
        _check_per_class(
            labels[rest.indices], self._class_list(source),
            self.holdout_per_class, 'holdout_per_class',
            f'{self.dataset}:{split} without the reference samples')
        held = data.reference_samples(rest, self.holdout_per_class,
                                      seed=self.seed + 1, classes=self.classes)
        return data.Subset(source, rest.indices[held])
    return source if keep.all() else data.Subset(source, np.flatnonzero(keep))

  def _class_list(self, source) -> list[int]:
    """The task's classes, or every class of ``source``."""
    if self.classes is not None:
      return list(self.classes)
    num_classes = getattr(source, 'num_classes', None)
    return (list(range(num_classes)) if num_classes
            else np.unique(data.labels_of(source)).tolist())

  def batches(self, split: str, *, cached: bool = False):
    """This process's evaluation batches of ``split`` (``source``; on
    several processes each reads an equal contiguous part, in batches of
    ``eval_batch_size`` / processes): streamed, or held in memory when
    ``cached`` (what a search re-reads every trial)."""
    source = distribute.process_part(self.source(split))
    step = self._eval_step(split)
    if not cached:
      return data.batches(source, self.preprocess, step)
    if split not in self._arrays:
      images, labels = data.as_arrays(source, self.preprocess)
      self._arrays[split] = [dict(image=images[i:i + step],
                                  label=labels[i:i + step])
                             for i in range(0, len(labels), step)]
    return self._arrays[split]

  def _eval_step(self, split: str) -> int:
    """Evaluation examples per batch and process: ``eval_batch_size``, or
    the whole split when smaller (batches are padded to this size)."""
    return min(self.local_batch(self.eval_batch_size),
               self.local_batch(len(self.source(split))))

  def local_batch(self, global_size: int) -> int:
    """This process's examples of a global batch (``distribute``)."""
    return distribute.local_batch(global_size, self.device_mesh)

  @property
  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest normalised pixel, per channel."""
    return self.spec.input_bounds(self.preprocess.mean, self.preprocess.std)

  # Units, composites and criteria -------------------------------------------

  @functools.cached_property
  def units(self) -> dict[str, structure.Unit]:
    """The units this task prunes."""
    return self.found.units(self.units_type)

  def composite(self, name: str = '', json_path: str = ''
                ) -> tuple[composites.Composite, dict[str, Any]]:
    """The composite a config names: a JSON file (``{"preset", "args"}``,
    e.g. the search's best_composite.json), a preset name, or '' for the
    family's default for pruning; and the JSON's other fields (its ranking
    sign ``signed``, ``n_per_class``)."""
    if json_path:
      path = pathlib.Path(json_path)
      if not path.exists():
        raise FileNotFoundError(f'--config.composite_json={path} does not '
                                'exist')
      spec = files.read_json(path, 'give --config.composite_json a '
                                   'composite JSON such as the search\'s '
                                   'best_composite.json')
      extra = {k: v for k, v in spec.items() if k not in ('preset', 'args')}
      return composites.from_json(spec), extra
    if not name:
      return composites.get(self.spec.pruning_composite(self.found)), {}
    if name in composites.BOUNDED:
      low, high = self.bounds
      return composites.get(name, low=low, high=high), {}
    return composites.get(name), {}

  def heatmap_composite(self) -> composites.Composite:
    low, high = self.bounds
    return composites.for_model(self.model, low, high, found=self.found)

  def criterion(self, name: str, *, composite=None, signed: bool = False,
                seed: int = 0, ig_steps: int = 20, ig_form: str = 'reference',
                dynamic_rules: bool = False) -> criteria.Criterion:
    """Criterion ``name`` with the task's options (``seed`` is added to the
    task's seed; LRP takes the task's ``precision`` and ``remat``, the
    gradient criteria run in float32)."""
    options = {
        'lrp': dict(composite=composite, signed=signed,
                    absolute_tokens=self.absolute_tokens,
                    dynamic_rules=dynamic_rules, precision=self.precision,
                    remat=self.remat),
        'random': dict(seed=self.seed + seed),
        'integrated_gradients': dict(steps=ig_steps, form=ig_form),
    }.get(name, {})
    if name == 'lrp' and composite is None:
      raise ValueError('the lrp criterion needs a composite')
    return criteria.get(name, **options)

  def score(self, criterion: criteria.Criterion,
            n_per_class: int | None = None) -> criteria.Scores:
    """The units' scores by ``criterion`` on the reference samples."""
    images, labels = self.references(n_per_class)
    return criterion.score(self.model, self.variables, images, labels,
                           self.units, batch_size=self.batch_size,
                           mesh=self.device_mesh)

  # Evaluation ------------------------------------------------------------------

  def accuracy(self, masks: Mapping[str, Mapping[str, Any]], split: str, *,
               cached: bool = False, variables=None) -> dict[str, np.ndarray]:
    """name -> accuracy of each row of ``masks[name]`` (unit key -> (rows,
    units)) on ``split``, all evaluated by one compiled program."""
    names = list(masks)
    accuracy = sweep.sweep_accuracy(
        self.model, self.variables if variables is None else variables,
        self.batches(split, cached=cached), metrics.stack(masks),
        self.num_classes,
        self.classes if self.other_classes == 'excluded' else None,
        mesh=self.device_mesh, n_batches=distribute.batch_count(
            len(self.source(split)), self._eval_step(split)),
        batch_size=self._eval_step(split))
    rows = [len(next(iter(masks[n].values()))) for n in names]
    starts = np.cumsum([0, *rows])
    return {n: accuracy[starts[i]:starts[i + 1]] for i, n in enumerate(names)}



OTHER_CLASSES = ('excluded', 'zeroed')
IN_MEMORY_BYTES = 2**30  # larger reference sets are read batch by batch


def draw_classes(num_classes: int, count: int, seed: int) -> list[int]:
  """``count`` of ``num_classes`` classes drawn without replacement with
  ``np.random.default_rng(seed)``, sorted (the PXP reference draws its
  few-class tasks with the run's seed)."""
  if not 2 <= count <= num_classes:
    raise ValueError(f'--config.class_draw={count} must lie in [2, '
                     f'{num_classes}]: the model has {num_classes} classes')
  rng = np.random.default_rng(seed)
  return sorted(int(c) for c in rng.choice(num_classes, count, replace=False))


def _checked_classes(classes, num_classes: int) -> list[int] | None:
  """The few-class task's classes (None: all), or a clear error."""
  classes = [int(c) for c in classes]
  if not classes:
    return None
  shown = f'--config.classes={tuple(classes)}'
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f'{shown}: {bad} are not classes of this model; its '
                     f'classes are 0 to {num_classes - 1}')
  if len(set(classes)) != len(classes) or len(classes) < 2:
    raise ValueError(f'{shown} must name at least two different classes: '
                     'with one class every pruned model is 100% accurate')
  return classes


def _check_per_class(labels, classes, wanted: int, field: str,
                     where: str) -> None:
  """A clear error when a class of ``classes`` has fewer than ``wanted``
  examples in ``labels``."""
  counts = {int(c): int(np.sum(labels == c)) for c in classes}
  short = {c: n for c, n in counts.items() if n < wanted}
  if not short:
    return
  shown = ', '.join(f'class {c}: {n}' for c, n in sorted(short.items())[:5])
  empty = sorted(c for c, n in short.items() if n == 0)
  fix = (f'classes {empty} have none: choose classes the data has '
         '(--config.classes)' if empty else
         f'set --config.{field} to at most {min(counts.values())}')
  raise ValueError(f'--config.{field}={wanted}, but {where} has fewer '
                   f'examples of classes {sorted(short)} ({shown}); {fix}')


def zero_other_classes(variables, classifier: str, classes: Sequence[int]):
  """``variables`` with the classifier's kernel columns and bias entries of
  every class not in ``classes`` set to zero (the PXP reference's few-class
  task: those logits are 0)."""
  flat = flax.traverse_util.flatten_dict(variables, sep='.')
  keep = np.zeros(np.shape(flat[f'params.{classifier}.kernel'])[-1], bool)
  keep[list(classes)] = True
  for name in ('kernel', 'bias'):
    key = f'params.{classifier}.{name}'
    if key in flat:
      flat[key] = flat[key] * keep.astype(np.asarray(flat[key]).dtype)
  return flax.traverse_util.unflatten_dict(flat, sep='.')
