"""Pruning by eXplaining: unit scores -> masks -> masked evaluation.

  criteria.py   unit scores by LRP and the baselines (objects with options)
  ranking.py    scores -> nested masks over pruning rates
  evaluation.py accuracy (masks accepted) and scores evaluated at rates
  sweep.py      masked_apply and one compiled program per sweep
  metrics.py    A_PR, AUC, Top-PR
  training.py   the one training step and masked optimiser
  finetune.py   fine_tune and iterative pruning on it (pruned units stay)
  masking.py    unit masks -> parameter masks; masks in an optax state
  slim.py       pruned units removed physically: slim(model, variables, masks)

Pure functions over pytrees: scores and masks are dicts from a unit key
(``pxp_jax.models.structure.Unit``) to a vector over the layer's units.
"""

from pxp_jax.prune import criteria, slim, training
from pxp_jax.prune.evaluation import (Evaluation, accuracies, accuracy,
                                      evaluate, zero_other_classes)
from pxp_jax.prune.finetune import fine_tune, iterative
from pxp_jax.prune.ranking import DEFAULT_RATES, check_rates, masks, normalize
from pxp_jax.prune.masking import (apply_masks, masked, param_masks,
                                   update_masks)
from pxp_jax.prune.metrics import stack, summarize
from pxp_jax.prune.sweep import masked_apply, sweep_accuracy, sweep_correct

__all__ = ['DEFAULT_RATES', 'Evaluation', 'accuracies', 'accuracy',
           'apply_masks', 'check_rates', 'criteria', 'evaluate', 'fine_tune',
           'iterative', 'masked', 'masked_apply', 'masks', 'normalize', 'param_masks',
           'slim', 'stack', 'summarize', 'sweep_accuracy', 'sweep_correct',
           'training', 'update_masks', 'zero_other_classes']
