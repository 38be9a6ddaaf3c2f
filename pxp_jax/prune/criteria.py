"""Pruning criteria: a score per unit from a few reference samples.

A criterion is an object that carries its options; ``criterion.score(model,
variables, images, labels, units)`` returns unit key -> (units,) scores,
higher = keep:

- ``LRP``: LRP relevance of the unit for the true label (initial relevance 1
  at the label), absolute per sample, summed over samples (Yeom et al., 2021;
  the PXP reference's definition); signed sums as an option.
- ``Random``: uniform noise (a seed per run).
- ``Weight``: L1 norm of the unit's weights (a filter's kernel, a neuron's
  input weights, a head's query/key/value weights; Li et al., 2017).
- ``Gradient``: |mean over positions of the gradient of the label's logit at
  the unit output|, summed over samples.
- ``Taylor``: |mean over positions of activation x gradient| at the unit
  output, summed over samples (Molchanov et al., 2017).
- ``IntegratedGradients``: unit conductance along the straight path from a
  zero input: |mean over positions of (a(x) - a(0)) x mean_k grad a(k/m x)|,
  summed over samples (Sundararajan et al., 2017, at the unit's layer).

All are measured where the pruning mask acts (a conv after its BatchNorm, a
head at its softmax output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import structure, taps
from pxp_jax.lrp import attribution as attribute_lib
from pxp_jax.models import spec as spec_lib

Scores = dict[str, np.ndarray]


class Criterion:
  """A way to score units; subclasses are dataclasses of their options."""

  name: ClassVar[str] = ''

  def score(self, model, variables, images, labels,
            units: Mapping[str, structure.Unit], *, batch_size: int = 32
            ) -> Scores:
    """unit key -> (units,) float64 scores over the reference samples
    ``images`` (N, H, W, C) with ``labels`` (N,); ``batch_size`` samples per
    compiled call (the last batch is padded: one program for any count)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LRP(Criterion):
  """LRP relevance under ``composite``; ``signed`` sums R instead of |R|;
  ``absolute_tokens`` takes |R| per token first; ``dynamic_rules`` compiles
  one program for every choice of rules (a search)."""

  composite: Any
  signed: bool = False
  absolute_tokens: bool = False
  dynamic_rules: bool = False
  name: ClassVar[str] = 'lrp'

  def score(self, model, variables, images, labels, units, *,
            batch_size=32):
    def per_batch(x, t):
      result = attribute_lib.attribute(
          model, variables, x, t, self.composite,
          absolute_tokens=self.absolute_tokens,
          dynamic_rules=self.dynamic_rules, input_relevance=False,
          check_finite=False)
      return {k: result.units[k] for k in units}
    return _summed(per_batch, images, labels, units, batch_size,
                   (lambda v: v) if self.signed else np.abs, self.name)


@dataclasses.dataclass(frozen=True)
class Random(Criterion):
  """Uniform noise from ``seed``."""

  seed: int = 0
  name: ClassVar[str] = 'random'

  def score(self, model, variables, images, labels, units, *,
            batch_size=32):
    del model, variables, images, labels, batch_size
    rng = np.random.default_rng(self.seed)
    return {k: rng.random(u.size) for k, u in units.items()}


@dataclasses.dataclass(frozen=True)
class Weight(Criterion):
  """L1 norm of each unit's weights (heads: as the family spec reads them)."""

  name: ClassVar[str] = 'weight'

  def score(self, model, variables, images, labels, units, *,
            batch_size=32):
    del labels, batch_size
    params = flax.traverse_util.flatten_dict(variables['params'], sep='.')
    found = None
    out = {}
    for key, unit in units.items():
      if unit.type == 'heads':
        found = found or structure.trace(model, variables,
                                         np.shape(images[:1]))
        out[key] = spec_lib.spec_for(model).head_weights(params, unit, found)
      else:
        kernel = np.abs(np.asarray(params[f'{unit.layer}.kernel']))
        out[key] = kernel.reshape(-1, unit.size).sum(0)
    return out


class _AtTheUnits(Criterion):
  """Criteria from the label logit's gradient at the units' sites."""

  def score(self, model, variables, images, labels, units, *,
            batch_size=32):
    run = _sensitivity(model, variables, units, self.name,
                       getattr(self, 'steps', 0))
    return _summed(run, images, labels, units, batch_size, np.abs, self.name)


@dataclasses.dataclass(frozen=True)
class Gradient(_AtTheUnits):
  """|mean over positions of the label logit's gradient at the unit|."""

  name: ClassVar[str] = 'gradient'


@dataclasses.dataclass(frozen=True)
class Taylor(_AtTheUnits):
  """|mean over positions of activation x gradient| (Molchanov et al.)."""

  name: ClassVar[str] = 'taylor'


@dataclasses.dataclass(frozen=True)
class IntegratedGradients(_AtTheUnits):
  """Unit conductance from a zero input with ``steps`` path points."""

  steps: int = 16
  name: ClassVar[str] = 'integrated_gradients'


REGISTRY: dict[str, type[Criterion]] = {
    c.name: c for c in (LRP, Random, Weight, Gradient, Taylor,
                        IntegratedGradients)}
CRITERIA = tuple(REGISTRY)


def get(name: str, **options) -> Criterion:
  """A criterion by name (``CRITERIA``) with its options."""
  if name not in REGISTRY:
    raise ValueError(f'unknown criterion {name!r}; use one of '
                     f'{", ".join(CRITERIA)}')
  cls = REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(options) - fields
  if unknown:
    raise TypeError(f'criterion {name!r} takes {sorted(fields) or "no options"}'
                    f', not {sorted(unknown)}')
  return cls(**options)


def _summed(per_batch: Callable, images, labels, units, batch_size,
            transform, name) -> Scores:
  """``transform(per-sample values)`` summed over all samples, in batches
  of ``batch_size`` (the last one padded)."""
  totals = {k: np.zeros(u.size) for k, u in units.items()}
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
    raise FloatingPointError(f'{name} scores are NaN or infinite for '
                             f'{", ".join(bad[:5])}')
  return totals


def _sensitivity(model, variables, units, criterion, steps):
  """A jitted (images, labels) -> unit key -> (B, units) per-sample values."""

  def probed(x, labels, additive, sites):
    """The summed label logits with ``additive`` added to the outputs at the
    units' sites, and those outputs."""
    acts = {}

    def tap(call, proceed):
      out = proceed()
      key = sites.get(call.path)
      if key is None:
        return out
      acts[key] = out
      return out + additive[key]

    logits = taps.apply(model, variables, x, taps=[tap])
    return jnp.take_along_axis(logits, labels[:, None], 1).sum(), acts

  def reduce(values, key):
    """(B, ..., units) -> (B, units): mean over positions (heads: over
    queries and keys, the head axis being 1)."""
    if units[key].axis == 1:
      return values.mean(axis=(2, 3))
    return values.reshape(values.shape[0], -1, values.shape[-1]).mean(1)

  @jax.jit
  def run(x, labels):
    found = structure.trace(model, variables, x.shape, x.dtype)
    sites = found.sites(units)
    zeros = {k: jnp.zeros(found.shape_of(site), x.dtype)
             for site, k in sites.items()}
    grad_fn = jax.grad(lambda x, p: probed(x, labels, p, sites), argnums=1,
                       has_aux=True)
    if criterion in ('gradient', 'taylor'):
      grads, acts = grad_fn(x, zeros)
      if criterion == 'gradient':
        return {k: reduce(grads[k], k) for k in units}
      return {k: reduce(grads[k] * acts[k], k) for k in units}
    # integrated gradients at the units, from the zero input
    _, base = probed(jnp.zeros_like(x), labels, zeros, sites)
    _, end = probed(x, labels, zeros, sites)

    def step(total, alpha):
      grads, _ = grad_fn(alpha * x, zeros)
      return jax.tree.map(jnp.add, total, grads), None

    alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps
    total, _ = jax.lax.scan(step, zeros, alphas)
    return {k: reduce((end[k] - base[k]) * total[k] / steps, k)
            for k in units}

  return run
