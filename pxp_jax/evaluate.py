"""Top-1 accuracy of a model over batches of a split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def accuracy(model, variables, batches: Iterable[Mapping[str, np.ndarray]]
             ) -> float:
  """Fraction of examples whose arg-max logit is the label.

  Args:
    model: a flax module returning logits.
    variables: its variables.
    batches: dicts with ``image`` (N, H, W, C) float and ``label`` (N,) int.

  Returns:
    Top-1 accuracy in [0, 1].
  """
  predict = _predict(model)
  correct = total = 0
  for batch in batches:
    labels = np.asarray(batch['label'])
    correct += int(np.sum(np.asarray(predict(variables, batch['image']))
                          == labels))
    total += labels.shape[0]
  if total == 0:
    raise ValueError('no examples to evaluate: the split (or the class '
                     'subset) is empty')
  return correct / total


def _predict(model):
  return jax.jit(lambda v, x: jnp.argmax(model.apply(v, x), axis=-1))
