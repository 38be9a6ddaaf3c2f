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
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pxp_jax import checkpoints, composites, data, structure
from pxp_jax.models import spec as spec_lib
from pxp_jax.prune import criteria, metrics, sweep


@dataclasses.dataclass
class Task:
  """A model, its data and reference samples, and the units to prune.

  Attributes mirror the config fields of ``experiments/configs``: ``model``
  (a checkpoint name or folder), ``dataset`` and ``data_dir`` ('' = the
  checkpoint's), ``classes`` (the few-class task; () = all),
  ``reference_split``, ``n_per_class``, ``seed``, ``units`` ('' = the
  family's default), ``absolute_tokens`` (None = the family's default),
  ``batch_size`` (reference samples per relevance pass) and
  ``eval_batch_size``.
  """

  model_name: str
  dataset: str = ''
  data_dir: str = ''
  classes: Sequence[int] = ()
  reference_split: str = 'train'
  n_per_class: int = 10
  seed: int = 0
  units_type: str = ''
  absolute_tokens: bool | None = None
  batch_size: int = 32
  eval_batch_size: int = 512

  def __post_init__(self):
    self.model, self.variables = checkpoints.load(self.model_name)
    self.recipe = checkpoints.recipe(self.model_name)
    self.num_classes = self.recipe['num_classes']
    self.preprocess = data.Preprocess(**self.recipe['preprocess'])
    self.dataset = self.dataset or self.recipe['dataset']
    self.classes = list(self.classes) or None
    self.spec = spec_lib.spec_for(self.model)
    size = self.preprocess.crop_size
    self.found = structure.trace(self.model, self.variables,
                                 (1, size, size, 3))
    self.units_type = self.units_type or self.spec.default_units(self.found)
    if self.absolute_tokens is None:
      self.absolute_tokens = self.spec.absolute_tokens(self.found)
    self._references, self._arrays = {}, {}

  @classmethod
  def from_config(cls, config) -> 'Task':
    return cls(config.model, config.dataset, config.data_dir,
               tuple(config.classes), config.reference_split,
               config.n_per_class, config.seed, config.units,
               config.absolute_tokens, config.batch_size,
               config.eval_batch_size)

  # Data ----------------------------------------------------------------------

  def split(self, name: str):
    """The data source of split ``name``."""
    return data.load(self.dataset, name, data_dir=self.data_dir or None)

  def references(self, n_per_class: int | None = None):
    """The seeded reference samples ``(images, labels)``, ``n_per_class``
    of each class (default: the task's)."""
    n = n_per_class or self.n_per_class
    if n not in self._references:
      self._references[n] = data.reference_batch(
          self.split(self.reference_split), self.preprocess, n,
          seed=self.seed, classes=self.classes)
    return self._references[n]

  def batches(self, split: str, *, cached: bool = False):
    """Evaluation batches of ``split``: streamed, or held in memory when
    ``cached`` (what a search re-reads every trial)."""
    if not cached:
      return data.batches(self.split(split), self.preprocess,
                          self.eval_batch_size, classes=self.classes)
    if split not in self._arrays:
      images, labels = data.as_arrays(self.split(split), self.preprocess,
                                      classes=self.classes)
      step = self.eval_batch_size
      self._arrays[split] = [dict(image=images[i:i + step],
                                  label=labels[i:i + step])
                             for i in range(0, len(labels), step)]
    return self._arrays[split]

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
      if not path.is_file():
        raise FileNotFoundError(f'--config.composite_json={path} does not '
                                'exist')
      spec = json.loads(path.read_text())
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
                seed: int = 0, ig_steps: int = 16,
                dynamic_rules: bool = False) -> criteria.Criterion:
    """Criterion ``name`` with the task's options (``seed`` is added to the
    task's seed)."""
    options = {
        'lrp': dict(composite=composite, signed=signed,
                    absolute_tokens=self.absolute_tokens,
                    dynamic_rules=dynamic_rules),
        'random': dict(seed=self.seed + seed),
        'integrated_gradients': dict(steps=ig_steps),
    }.get(name, {})
    if name == 'lrp' and composite is None:
      raise ValueError('the lrp criterion needs a composite')
    return criteria.get(name, **options)

  def score(self, criterion: criteria.Criterion,
            n_per_class: int | None = None) -> criteria.Scores:
    """The units' scores by ``criterion`` on the reference samples."""
    images, labels = self.references(n_per_class)
    return criterion.score(self.model, self.variables, images, labels,
                           self.units, batch_size=self.batch_size)

  # Evaluation ------------------------------------------------------------------

  def accuracy(self, masks: Mapping[str, Mapping[str, Any]], split: str, *,
               cached: bool = False, variables=None) -> dict[str, np.ndarray]:
    """name -> accuracy of each row of ``masks[name]`` (unit key -> (rows,
    units)) on ``split``, all evaluated by one compiled program."""
    names = list(masks)
    accuracy = sweep.sweep_accuracy(
        self.model, self.variables if variables is None else variables,
        self.batches(split, cached=cached), metrics.stack(masks),
        self.num_classes, self.classes)
    rows = [len(next(iter(masks[n].values()))) for n in names]
    starts = np.cumsum([0, *rows])
    return {n: accuracy[starts[i]:starts[i + 1]] for i, n in enumerate(names)}

