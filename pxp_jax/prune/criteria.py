"""Pruning criteria: a score per unit from a few reference samples.

Every criterion returns unit key -> (units,) scores, higher = keep:

- ``lrp``: LRP relevance of the unit for the true label (initial relevance 1
  at the label), absolute per sample, summed over samples (Yeom et al., 2021;
  the PXP reference's definition); signed sums as an option.
- ``random``: uniform noise (a seed per run).
- ``weight``: L1 norm of the unit's weights (a filter's kernel, a neuron's
  input weights, a head's query/key/value weights; Li et al., 2017).
- ``gradient``: |mean over positions of the gradient of the label's logit at
  the unit output|, summed over samples.
- ``taylor``: |mean over positions of activation x gradient| at the unit
  output, summed over samples (Molchanov et al., 2017).
- ``integrated_gradients``: unit conductance along the straight path from a
  zero input: |sum over positions of (a(x) - a(0)) x mean_k grad a(k/m x)|,
  summed over samples (Sundararajan et al., 2017, at the unit's layer).

All are measured where the pruning mask acts (a conv after its BatchNorm, a
head at its softmax output).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import pruning, relevance, structure

CRITERIA = ('lrp', 'random', 'weight', 'gradient', 'taylor',
            'integrated_gradients')


def score(criterion: str, model: nn.Module, variables, images, labels,
          units: Mapping[str, structure.Op], *, composite=None,
          batch_size: int = 32, signed: bool = False,
          absolute_tokens: bool = False, seed: int = 0,
          ig_steps: int = 16, dynamic_rules: bool = False
          ) -> dict[str, np.ndarray]:
  """Scores of ``units`` by ``criterion`` over the reference samples.

  Args:
    criterion: one of ``CRITERIA``.
    model, variables: the model.
    images, labels: the reference samples (N, H, W, C) and their labels.
    units: the units to score (``pruning.prunable``).
    composite: the LRP composite (``lrp`` only).
    batch_size: samples per compiled call (the last batch is padded, so any
      sample count reuses one program).
    signed: ``lrp``: sum signed relevance instead of its absolute value.
    absolute_tokens: ``lrp``: |R| per token before the sum over tokens.
    seed: ``random``.
    ig_steps: ``integrated_gradients``: points on the path.
    dynamic_rules: ``lrp``: one compiled program for every choice of rules
      (see ``pxp_jax.attribute``), as a search over rules wants.

  Returns:
    unit key -> (units,) float64 scores.
  """
  if criterion not in CRITERIA:
    raise ValueError(f'unknown criterion {criterion!r}; use one of '
                     f'{", ".join(CRITERIA)}')
  n = pruning.sizes(units)
  if criterion == 'random':
    rng = np.random.default_rng(seed)
    return {k: rng.random(size) for k, size in n.items()}
  if criterion == 'weight':
    return _weight(variables, units)
  if criterion == 'lrp':
    if composite is None:
      raise ValueError('the lrp criterion needs a composite')

    def per_batch(x, t):
      result = relevance.attribute(model, variables, x, t, composite,
                                   absolute_tokens=absolute_tokens,
                                   dynamic_rules=dynamic_rules,
                                   input_relevance=False, check_finite=False)
      return {k: result.units[k] for k in units}

    transform = (lambda v: v) if signed else np.abs
  else:
    per_batch = _sensitivity(model, variables, units, criterion, ig_steps)
    transform = np.abs
  totals = {k: np.zeros(size) for k, size in n.items()}
  images, labels = np.asarray(images), np.asarray(labels)
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    t = labels[start:start + batch_size]
    valid = len(x)
    if valid < batch_size:  # pad: same shapes, same compiled program
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - valid, 0)])
      t = np.concatenate([t, np.repeat(t[-1:], batch_size - valid, 0)])
    values = per_batch(jnp.asarray(x), jnp.asarray(t))
    for k in units:  # summed on the host: no program per sample count
      totals[k] += transform(np.asarray(values[k], np.float64)[:valid]).sum(0)
  bad = [k for k, v in totals.items() if not np.all(np.isfinite(v))]
  if bad:
    raise FloatingPointError(f'{criterion} scores are NaN or infinite for '
                             f'{", ".join(bad[:5])}')
  return totals


def _weight(variables, units) -> dict[str, np.ndarray]:
  params = flax.traverse_util.flatten_dict(variables['params'], sep='.')
  out = {}
  for key, op in units.items():
    if op.kind == 'Softmax':  # head h: its q, k, v columns of the qkv layer
      kernel = np.asarray(params[f'{key}.qkv.kernel'])
      heads = op.shape[1]
      per_head = np.abs(kernel).reshape(kernel.shape[0], 3, heads, -1)
      out[key] = per_head.sum(axis=(0, 1, 3))
    else:
      kernel = np.abs(np.asarray(params[f'{op.path}.kernel']))
      out[key] = kernel.reshape(-1, kernel.shape[-1]).sum(0)
  return out


def _sensitivity(model, variables, units, criterion, steps):
  """A jitted (images, labels) -> unit key -> (B, units) per-sample values."""

  def probed(x, labels, additive, at):
    """The summed label logits with the probes ``additive`` added to the
    outputs where the masks act, and those outputs."""
    acts = {}

    def intercept(f, args, kwargs, context):
      out = f(*args, **kwargs)
      key = at.get('.'.join(context.module.path))
      if context.method_name != '__call__' or key is None:
        return out
      acts[key] = out
      return out + additive[key]

    with nn.intercept_methods(intercept):
      logits = model.apply(variables, x)
    return jnp.take_along_axis(logits, labels[:, None], 1).sum(), acts

  def reduce(values, key):
    """(B, ..., units) -> (B, units): mean over positions (heads: over
    queries and keys, the head axis being 1)."""
    if units[key].kind == 'Softmax':
      return values.mean(axis=(2, 3))
    return values.reshape(values.shape[0], -1, values.shape[-1]).mean(1)

  @jax.jit
  def run(x, labels):
    found = structure.trace(model, variables, x.shape, x.dtype)
    at = found.mask_sites(units)
    zeros = {k: jnp.zeros(found.shape_of(path), x.dtype)
             for path, k in at.items()}
    grad_fn = jax.grad(lambda x, p: probed(x, labels, p, at), argnums=1,
                       has_aux=True)
    if criterion in ('gradient', 'taylor'):
      grads, acts = grad_fn(x, zeros)
      if criterion == 'gradient':
        return {k: reduce(grads[k], k) for k in units}
      return {k: reduce(grads[k] * acts[k], k) for k in units}
    # integrated gradients at the units, from the zero input
    _, base = probed(jnp.zeros_like(x), labels, zeros, at)
    _, end = probed(x, labels, zeros, at)

    def step(total, alpha):
      grads, _ = grad_fn(alpha * x, zeros)
      return jax.tree.map(jnp.add, total, grads), None

    alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps
    total, _ = jax.lax.scan(step, zeros, alphas)
    return {k: reduce((end[k] - base[k]) * total[k] / steps, k)
            for k in units}

  return run
