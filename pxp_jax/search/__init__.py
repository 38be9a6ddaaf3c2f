"""The search over composites for pruning (Hatefi et al., 2024), on plain
objects: a model, its variables, reference samples and evaluation batches.

  space.py      the search space over layer groups: suggest, to_composite,
                the usual starting composites
  objective.py  a composite's A_PR or AUC: LRP scores -> masks -> one sweep
  driver.py     the study driver: run(space, objective, n_trials)
  storage.py    optuna storages (SQLite, journal, PostgreSQL) opened,
                checked and repaired
  workers.py    several workers on one study: places, per-trial seeds,
                heartbeats, retries

Example::

  space = search.Space.for_model(model)
  objective = search.Objective(model, variables, (images, labels), batches,
                               units, rates=(0.0, 0.1, 0.2), num_classes=10)
  study = search.run(space, objective, n_trials=10)
  best = space.to_composite(study.best_trial.params)
"""

from pxp_jax.search import storage, workers
from pxp_jax.search.driver import STUDY, SAMPLERS, make_sampler, run
from pxp_jax.search.objective import METRICS, Objective
from pxp_jax.search.space import Space

__all__ = ['METRICS', 'Objective', 'SAMPLERS', 'STUDY', 'Space',
           'make_sampler', 'run', 'storage', 'workers']
