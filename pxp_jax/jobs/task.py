"""The pruning task of a job: a config's fields -> the library's objects.

``Task.from_config`` loads the checkpoint, builds the few-class task and
the seeded draws (``pxp_jax.data.tasks``), traces the units and holds them
with the data the prune job, the search and the evaluate binary read;
evaluation is ``pxp_jax.prune.evaluation``. Every argument is checked by the
object it builds, and its error names the config field
(``validate.as_config``).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from pxp_jax import checkpoints, composites, data, distribute, files
from pxp_jax.checks import ArgumentError
from pxp_jax.jobs import validate
from pxp_jax.models import spec as spec_lib
from pxp_jax.models import structure
from pxp_jax.prune import criteria, evaluation

IN_MEMORY_BYTES = 2**30  # larger reference sets are read batch by batch
# The config fields a task reads besides the model (``Task.load``'s).
CONFIG_FIELDS = ('dataset', 'data_dir', 'classes', 'class_draw',
                 'other_classes', 'reference_split', 'n_per_class', 'seed',
                 'holdout_per_class', 'units', 'mesh', 'batch_size',
                 'eval_batch_size', 'absolute_tokens', 'precision', 'remat')


@dataclasses.dataclass
class Task:
  """A model, its few-class task and draws, its data and units to prune.

  Attributes:
    model_name: the checkpoint name or folder.
    model, variables, recipe: the checkpoint (``checkpoints.load``; the
      variables replicated over ``device_mesh``, and for a zeroed
      few-class task those of ``evaluation.zero_other_classes``).
    dataset, data_dir, reference_split: where the data are.
    few_class: the task's classes (``data.FewClass``).
    draw: the reference samples and holdout (``data.Draw``).
    spec, found: the family's spec and the model's structure.
    units_type: filters, neurons or heads.
    device_mesh: the device mesh (``pxp_jax.distribute``).
    batch_size, eval_batch_size: samples per relevance pass and per
      evaluation batch.
    absolute_tokens, precision, remat: LRP's options (``criteria.LRP``).
  """

  model_name: str
  model: Any
  variables: Any
  recipe: dict
  dataset: str
  data_dir: str
  reference_split: str
  few_class: data.FewClass
  draw: data.Draw
  spec: Any
  found: structure.Structure
  units_type: str
  device_mesh: Any
  batch_size: int = 32
  eval_batch_size: int = 512
  absolute_tokens: bool = True
  precision: str = 'float32'
  remat: bool = False
  _cache: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def load(cls, model_name: str, *, dataset: str = '', data_dir: str = '',
           classes=(), class_draw: int = 0, other_classes: str = 'excluded',
           reference_split: str = 'train', n_per_class: int = 10,
           seed: int = 0, holdout_per_class: int = 0, units_type: str = '',
           mesh: Mapping[str, int] | None = None, **options) -> 'Task':
    """The task of checkpoint ``model_name`` (the fields of
    ``experiments/configs``: ``class_draw`` > 0 draws that many classes with
    ``seed`` instead of ``classes``; ``units_type`` '' is the family's)."""
    validate.one_class_choice(classes, class_draw)
    with validate.as_config(count='class_draw', units_type='units'):
      model, variables = checkpoints.load(model_name)
      recipe = checkpoints.recipe(model_name)
      num_classes = recipe['num_classes']
      few_class = (
          data.FewClass.drawn(num_classes, class_draw, seed, other_classes)
          if class_draw else
          data.FewClass(tuple(classes), num_classes, other_classes))
      draw = data.Draw(n_per_class, seed, holdout_per_class)
      spec = spec_lib.spec_for(model)
      size = data.Preprocess(**recipe['preprocess']).crop_size
      found = structure.trace(model, variables, (1, size, size, 3))
      if few_class.classes and few_class.other_classes == 'zeroed':
        variables = evaluation.zero_other_classes(
            variables, spec.classifier or found.output_layer,
            few_class.classes)
      units_type = units_type or spec.default_units(found)
      have = sorted({u.type for u in found.units().values()})
      if units_type not in have:
        raise ArgumentError('units_type', units_type, f': {model_name} has '
                            f'no {units_type}; its units are '
                            f'{", ".join(have)} (or \'\' for the family\'s)')
    device_mesh = distribute.make_mesh(mesh)
    return cls(model_name, model, distribute.replicate(variables, device_mesh),
               recipe, dataset or recipe['dataset'], data_dir,
               reference_split, few_class, draw, spec, found, units_type,
               device_mesh, **options)

  @classmethod
  def from_config(cls, config) -> 'Task':
    """The task of a prune or search config (``experiments/configs``)."""
    renamed = dict(units='units_type')
    chosen = {renamed.get(k, k): v for k, v in config.items()
              if k in CONFIG_FIELDS}
    chosen['classes'] = tuple(chosen.get('classes', ()))
    if 'mesh' in chosen:
      chosen['mesh'] = dict(chosen['mesh'])
    return cls.load(config.model, **chosen)

  # The config's view of the task ---------------------------------------------

  @property
  def classes(self) -> list[int] | None:
    return self.few_class.classes

  @property
  def other_classes(self) -> str:
    return self.few_class.other_classes

  @property
  def num_classes(self) -> int:
    return self.recipe['num_classes']

  @property
  def n_per_class(self) -> int:
    return self.draw.n_per_class

  @property
  def seed(self) -> int:
    return self.draw.seed

  @functools.cached_property
  def preprocess(self) -> data.Preprocess:
    return data.Preprocess(**self.recipe['preprocess'])

  @property
  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest normalised pixel, per channel."""
    return self.spec.input_bounds(self.preprocess.mean, self.preprocess.std)

  # Data ----------------------------------------------------------------------

  def split(self, name: str, field: str | None = None):
    """The data source of split ``name``; an unknown split's error names
    the config ``field`` that gave it."""
    with validate.as_config(field=field, value=name):
      return data.load(self.dataset, name, data_dir=self.data_dir or None)

  def reference_indices(self, n_per_class: int | None = None) -> np.ndarray:
    """Indices into the reference split of the seeded reference samples,
    ``n_per_class`` of each class (default: the task's)."""
    n = n_per_class or self.n_per_class
    drawn = self._cache.setdefault('references', {})
    if n not in drawn:
      source = self.split(self.reference_split, 'reference_split')
      with validate.as_config():
        drawn[n] = self.draw.references(
            source, self.classes, n,
            where=f'{self.dataset}:{self.reference_split}')
    return drawn[n]

  def references(self, n_per_class: int | None = None):
    """The reference samples ``(images, labels)``: images in memory, or a
    ``data.Images`` read batch by batch when they would take over
    ``IN_MEMORY_BYTES``."""
    n = n_per_class or self.n_per_class
    samples = self._cache.setdefault('samples', {})
    if n not in samples:
      indices = self.reference_indices(n)
      source = self.split(self.reference_split)
      images = data.Images(source, self.preprocess, indices)
      if np.prod(images.shape) * 4 <= IN_MEMORY_BYTES:
        images = images[:]
      samples[n] = (images, data.labels_of(source)[indices].astype(np.int32))
    return samples[n]

  def source(self, split: str):
    """The examples of ``split`` that evaluation reads: those of the task's
    classes; on the reference split, none of the reference samples drawn so
    far, and ``holdout_per_class`` of each class if set (built once per
    split and set of reference draws)."""
    if split != self.reference_split:
      key = (split,)
      if key not in self._cache:
        self._cache[key] = self.few_class.restrict(self.split(split))
      return self._cache[key]
    self.reference_indices()  # the task's own draw is always left out
    drawn = self._cache['references']
    key = (split, tuple(sorted(drawn)))
    if key not in self._cache:
      with validate.as_config():
        self._cache[key] = self.draw.holdout(
            self.split(split), self.classes,
            np.concatenate(list(drawn.values())), where=f'{self.dataset}:'
            f'{split}')
    return self._cache[key]

  def batches(self, split: str, *, cached: bool = False):
    """This process's evaluation batches of ``split`` (``source``; on
    several processes each reads an equal contiguous part, in batches of
    ``eval_batch_size`` / processes): streamed, or held in memory when
    ``cached`` (what a search re-reads every trial)."""
    source = distribute.process_part(self.source(split))
    step = self._eval_step(split)
    if not cached:
      return data.batches(source, self.preprocess, step)
    arrays = self._cache.setdefault('arrays', {})
    if split not in arrays:
      images, labels = data.as_arrays(source, self.preprocess)
      arrays[split] = [dict(image=images[i:i + step], label=labels[i:i + step])
                       for i in range(0, len(labels), step)]
    return arrays[split]

  def _eval_step(self, split: str) -> int:
    """Evaluation examples per batch and process: ``eval_batch_size``, or
    the whole split when smaller (batches are padded to this size)."""
    return min(self.local_batch(self.eval_batch_size),
               self.local_batch(len(self.source(split))))

  def local_batch(self, global_size: int) -> int:
    """This process's examples of a global batch (``distribute``)."""
    return distribute.local_batch(global_size, self.device_mesh)

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
    if json_path:  # its existence is checked with the config
      spec = files.read_json(pathlib.Path(json_path),
                             'give --config.composite_json a composite JSON '
                             'such as the search\'s best_composite.json')
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

  # Evaluation ----------------------------------------------------------------

  def evaluation_options(self, split: str, *, cached: bool = False) -> dict:
    """The arguments of ``evaluation.evaluate`` / ``accuracies`` after the
    model's: the batches of ``split``, the classes and the mesh (every
    process passes the same ``n_batches`` and ``batch_size``)."""
    step = self._eval_step(split)
    return dict(batches=self.batches(split, cached=cached),
                classes=self.few_class.allowed, num_classes=self.num_classes,
                mesh=self.device_mesh,
                n_batches=distribute.batch_count(len(self.source(split)),
                                                 step),
                batch_size=step)

  def accuracy(self, masks: Mapping[str, Mapping[str, Any]], split: str, *,
               cached: bool = False, variables=None) -> dict[str, np.ndarray]:
    """name -> accuracy of each row of ``masks[name]`` (unit key -> (rows,
    units)) on ``split``, all evaluated by one compiled program."""
    return evaluation.accuracies(
        self.model, self.variables if variables is None else variables,
        masks=masks, **self.evaluation_options(split, cached=cached))
