r"""bfloat16 against float32 relevance passes: unit rankings and time.

  python benchmarks/precision_rankings.py [--reps=5]

For each shipped model and unit type, the LRP unit scores of the prune job
(``Task.criterion('lrp')`` with the family's pruning composite on the 10
reference samples per class) in float32 and in bfloat16
(``precision='bfloat16'``), their Spearman rank correlation
(scipy.stats.spearmanr over all units, as the global ranking sees them) and
the share of units pruned at 30% / 50% by both; then the time of one
relevance pass of the reference batch in each precision (median of
``--reps`` after a warm-up) and its ratio.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from scipy import stats

from pxp_jax.jobs.task import Task
from pxp_jax.lrp import attribution

import timing  # benchmarks/timing.py  # pylint: disable=g-import-not-at-top

_REPS = flags.DEFINE_integer('reps', 5, 'Timed calls per precision.')
CASES = (('resnet_digits', 'filters'), ('vit_digits', 'neurons'),
         ('vit_digits', 'heads'))


def _flat(scores):
  return np.concatenate([scores[k] for k in sorted(scores)])


def _overlap(a, b, rate):
  """Share of the ``rate`` least relevant units of ``a`` also among
  ``b``'s."""
  n = int(round(rate * len(a)))
  return len(set(np.argsort(a)[:n]) & set(np.argsort(b)[:n])) / max(n, 1)


def main(argv):
  del argv
  print(f'devices: {jax.devices()}')
  print('| model | units | count | Spearman | same 30% pruned | same 50% '
        'pruned | float32 ms | bfloat16 ms | bfloat16 / float32 |')
  print('|---|---|---|---|---|---|---|---|---|')
  for model_name, units in CASES:
    task = Task.load(model_name, units_type=units)
    composite, _ = task.composite()
    lrp = task.criterion('lrp', composite=composite)
    scores = {p: _flat(task.score(dataclasses.replace(lrp, precision=p)))
              for p in attribution.PRECISIONS}
    f32, bf16 = scores['float32'], scores['bfloat16']
    rho = stats.spearmanr(f32, bf16).statistic
    images, labels = task.references()
    images, labels = jnp.asarray(images[:task.batch_size]), jnp.asarray(
        labels[:task.batch_size])
    ms = {p: 1e3 * timing.median_seconds(lambda p=p: attribution.attribute(
        task.model, task.variables, images, labels, composite,
        absolute_tokens=True, input_relevance=False, check_finite=False,
        precision=p).units, _REPS.value) for p in attribution.PRECISIONS}
    print(f'| {model_name} | {units} | {len(f32)} | {rho:.5f} | '
          f'{_overlap(f32, bf16, 0.3):.3f} | {_overlap(f32, bf16, 0.5):.3f} | '
          f'{ms["float32"]:.0f} | {ms["bfloat16"]:.0f} | '
          f'{ms["bfloat16"] / ms["float32"]:.2f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
