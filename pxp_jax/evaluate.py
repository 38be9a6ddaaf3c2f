"""Top-1 accuracy of a model over batches of a split."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import distribute


def accuracy(model, variables, batches: Iterable[Mapping[str, np.ndarray]],
             *, mesh=None, n_batches: int | None = None,
             batch_size: int | None = None) -> float:
  """Fraction of examples whose arg-max logit is the label.

  Args:
    model: a flax module returning logits.
    variables: its variables.
    batches: dicts with ``image`` (N, H, W, C) float and ``label`` (N,) int.
    mesh: split every batch over this mesh's data axis
      (``pxp_jax.distribute.global_batches``: ``batches`` are this
      process's, padded to ``batch_size``; on several processes each passes
      the same ``n_batches``).

  Returns:
    Top-1 accuracy in [0, 1].
  """
  if mesh is not None:
    batches = distribute.global_batches(batches, mesh, n_batches, batch_size)
    variables = distribute.replicate(variables, mesh)
  count = _count_correct(model)
  correct = total = 0
  for batch in batches:
    right, seen = count(variables, batch['image'], batch['label'])
    correct += int(right)
    total += int(seen)
  if total == 0:
    raise ValueError('no examples to evaluate: the split (or the class '
                     'subset) is empty')
  return correct / total


@functools.cache
def _count_correct(model):
  """Correct and real examples of a batch (label -1 marks padding)."""

  @jax.jit
  def count(variables, images, labels):
    predicted = jnp.argmax(model.apply(variables, images), axis=-1)
    return jnp.sum(predicted == labels), jnp.sum(labels >= 0)

  return count
