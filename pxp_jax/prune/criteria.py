"""Pruning criteria: a score per unit from a few reference samples.

A criterion is an object that carries its options; ``criterion.score(model,
variables, images, labels, units)`` returns unit key -> (units,) scores,
higher = keep:

- ``LRP``: LRP relevance of the unit for the true label (initial relevance 1
  at the label), absolute per sample and token, summed over tokens and
  samples (Yeom et al., 2021; the PXP reference's definition); signed sums
  (no absolute value anywhere) as an option.
- ``Random``: uniform noise (a seed per run).
- ``Weight``: L1 norm of the unit's weights (a filter's kernel, a neuron's
  input weights, a head's query/key/value weights; Li et al., 2017).
- ``Gradient``: the 2021 reference's gradient criterion (Sun et al., 2017):
  the gradient of the true label's cross-entropy loss at the conv's own
  output (before its BatchNorm), a signed mean over positions summed over
  samples, |.| of the total.
- ``Taylor``: the same with activation x gradient (Molchanov et al., 2017).
- ``IntegratedGradients``: the 2024 reference's path-averaged gradient of
  the label logit along the straight path from a zero input (20 steps), or
  the unit's conductance (Dhamdhere et al., 2019) as an option.

``gradient_logit`` and ``taylor_logit`` (``REGISTRY``) are the earlier
definitions: the label logit's gradient at the mask site, |.| per sample.
Each class documents its formula and source. LRP is measured where the
pruning mask acts (a conv after its BatchNorm, a head at its softmax output);
the gradient criteria by default where the references measure them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import distribute
from pxp_jax.models import structure, taps
from pxp_jax.lrp import attribution as attribute_lib
from pxp_jax.models import spec as spec_lib

Scores = dict[str, np.ndarray]


class Criterion:
  """A way to score units; subclasses are dataclasses of their options."""

  name: ClassVar[str] = ''

  def score(self, model, variables, images, labels,
            units: Mapping[str, structure.Unit], *, batch_size: int = 32,
            mesh=None) -> Scores:
    """unit key -> (units,) float64 scores over the reference samples
    ``images`` (N, H, W, C) (an array or ``data.Images``) with ``labels``
    (N,); ``batch_size`` samples per
    compiled call (the last batch is padded: one program for any count),
    split over the data axis of ``mesh`` (``pxp_jax.distribute``) if
    given."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LRP(Criterion):
  """LRP relevance under ``composite``.

  By default a unit's score is ``sum_samples sum_tokens |R|``: the absolute
  value per sample and per token (per query for heads; a conv filter's
  relevance is summed over space first), the PXP reference's ``abs_flag``.
  ``absolute_tokens=False`` takes it per sample after summing the tokens.
  ``signed`` takes no absolute value anywhere: signed R summed over tokens
  and samples, so the most negative units are pruned first.
  ``dynamic_rules`` compiles one program for every choice of rules (a
  search). ``precision`` is the dtype of the relevance passes:
  ``bfloat16``, whose unit relevance is summed over positions, tokens and
  samples in float32 (``attribute``'s ``precision``), or ``float32``, the
  full precision of the inputs and variables as given (float32, or float64
  with x64 enabled: nothing is cast);
  ``remat`` recomputes each block's activations in the backward pass
  (``attribute``'s ``remat``): the same scores with less memory. The
  gradient criteria have neither option: they run in float32."""

  composite: Any
  signed: bool = False
  absolute_tokens: bool = True
  dynamic_rules: bool = False
  precision: str = 'float32'
  remat: bool = False
  name: ClassVar[str] = 'lrp'

  def __post_init__(self):
    attribute_lib.check_precision(self.precision)

  def score(self, model, variables, images, labels, units, *,
            batch_size=32, mesh=None):
    def per_batch(x, t):
      result = attribute_lib.attribute(
          model, variables, x, t, self.composite,
          absolute_tokens=self.absolute_tokens and not self.signed,
          dynamic_rules=self.dynamic_rules, input_relevance=False,
          check_finite=False, remat=self.remat,
          precision=None if self.precision == 'float32' else self.precision)
      return {k: result.units[k] for k in units}
    return _summed(per_batch, images, labels, units, batch_size, self.name,
                   per_sample=None if self.signed else np.abs, mesh=mesh)


@dataclasses.dataclass(frozen=True)
class Random(Criterion):
  """Uniform noise from ``seed``."""

  seed: int = 0
  name: ClassVar[str] = 'random'

  def score(self, model, variables, images, labels, units, *,
            batch_size=32, mesh=None):
    del model, variables, images, labels, batch_size, mesh
    rng = np.random.default_rng(self.seed)
    return {k: rng.random(u.size) for k, u in units.items()}


@dataclasses.dataclass(frozen=True)
class Weight(Criterion):
  """L1 norm of each unit's weights: ``sum |W|`` over a filter's kernel
  (all its input channels and positions, bias excluded) or a neuron's input
  weights, a head's query, key and value weights: the entries of role
  ``weights`` the family spec says each unit owns (``Spec.unit_params``).

  For conv filters this is the 2021 reference's weight criterion
  (``filterprune.py``: ``torch.sum(weight.abs(), dim=(1, 2, 3))`` per output
  channel; Li et al., 2017), checked against torch in
  ``tests/test_criteria.py``."""

  name: ClassVar[str] = 'weight'

  def score(self, model, variables, images, labels, units, *,
            batch_size=32, mesh=None):
    del labels, batch_size, mesh
    params = flax.traverse_util.flatten_dict(variables['params'], sep='.')
    shapes = {('params', k): np.shape(v) for k, v in params.items()}
    spec = spec_lib.spec_for(model)
    found = None
    out = {}
    for key, unit in units.items():
      if unit.type == 'heads':  # their projections are found by the trace
        found = found or structure.trace(model, variables,
                                         np.shape(images[:1]))
      shares = spec.params_of(unit, found, shapes, ('weights',))
      sums = [_unit_sums(np.abs(np.asarray(params[s.name])), s, unit.size)
              for s in shares]
      if len(sums) == 1:
        out[key] = sums[0]
      else:
        out[key] = np.zeros(unit.size)
        for part in sums:
          out[key] += part
    return out


def _unit_sums(weights: np.ndarray, share, size: int) -> np.ndarray:
  """``weights`` summed over every entry but the units' (``share``'s
  layout along its axis): (size,)."""
  axis = share.axis % weights.ndim
  if share.tile == share.repeat == 1:
    if axis == weights.ndim - 1:
      return weights.reshape(-1, size).sum(0)
    return weights.sum(axis=tuple(i for i in range(weights.ndim)
                                  if i != axis))
  split = weights.reshape(weights.shape[:axis]
                          + (share.tile, size, share.repeat)
                          + weights.shape[axis + 1:])
  return split.sum(axis=tuple(i for i in range(split.ndim) if i != axis + 1))


LOSSES = ('cross_entropy', 'logit')
IG_FORMS = ('reference', 'conductance')


class _AtTheUnits(Criterion):
  """Criteria from gradients at the units: one jitted program per ``score``
  call, whatever the number of samples (the batches are padded)."""

  def _program(self) -> dict:
    """The keyword arguments of ``_sensitivity``."""
    raise NotImplementedError

  def _transforms(self) -> dict:
    """``per_sample`` and ``final`` of ``_summed``."""
    raise NotImplementedError

  def score(self, model, variables, images, labels, units, *,
            batch_size=32, mesh=None):
    run = _sensitivity(model, variables, units, **self._program())
    return _summed(run, images, labels, units, batch_size, self.name,
                   **self._transforms(), mesh=mesh)


@dataclasses.dataclass(frozen=True)
class _FirstOrder(_AtTheUnits):
  """Gradient and Taylor: their options (see ``Gradient``)."""

  loss: str = 'cross_entropy'
  before_norm: bool = True
  abs_per_sample: bool = False
  value: ClassVar[str] = ''

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f'{self.name}: unknown loss {self.loss!r}; use one of '
                       f'{LOSSES}')

  def _program(self):
    return dict(value=self.value, loss=self.loss,
                before_norm=self.before_norm)

  def _transforms(self):
    if self.abs_per_sample:
      return dict(per_sample=np.abs)
    return dict(final=np.abs)


@dataclasses.dataclass(frozen=True)
class Gradient(_FirstOrder):
  """The gradient criterion of the 2021 PXP reference (Sun et al., 2017).

  score(u) = | sum_n mean_p dL_n / dz_{n,p,u} |

  with ``L_n = -log softmax(f(x_n))[y_n]`` the cross-entropy loss of sample
  n's true label and ``z`` the unit's output: a conv's own output (before
  the BatchNorm that follows it) at the positions p = (h, w); a dense
  neuron's output at every token; a head's softmax output at every (query,
  key). The mean over positions is signed, so is the sum over samples; the
  absolute value is taken once, of the total.

  Source: ``modules/filterprune.py`` of seulkiyeom/LRP_pruning (criterion
  ``grad``): a backward hook on each ``nn.Conv2d`` reads the gradient of
  ``nn.CrossEntropyLoss()`` at the conv's output, sums it over batch and
  space, divides by ``B * H * W``, adds the result over batches and takes
  ``abs`` in ``normalize_ranks_per_layer``. With batches of B samples its
  value is ours / B^2 (the loss's mean over the batch and the mean over the
  batch), a factor common to every unit, which changes neither a global
  ranking nor the per-layer L2 normalisation
  (``pxp_jax.prune.ranking.normalize(scores, 2)``); ours does not depend on
  how the samples are batched.

  Attributes:
    loss: ``cross_entropy`` (the reference) or ``logit`` (the label's logit,
      ``f(x_n)[y_n]``).
    before_norm: measure a conv that a BatchNorm follows at the conv's own
      output (the reference); False: at the BatchNorm's output, where the
      pruning mask acts (the two differ by the BatchNorm's per-channel
      scale). Other units have no norm to step over.
    abs_per_sample: ``sum_n |mean_p ...|``, the absolute value per sample
      (False: the reference's signed sum, |.| of the total).
  """

  value: ClassVar[str] = 'gradient'
  name: ClassVar[str] = 'gradient'


@dataclasses.dataclass(frozen=True)
class Taylor(_FirstOrder):
  """The Taylor criterion of the 2021 PXP reference (Molchanov et al., 2017).

  score(u) = | sum_n mean_p z_{n,p,u} dL_n / dz_{n,p,u} |

  as ``Gradient`` (the same loss, unit outputs, signed means and options)
  with the activation times its gradient. Source: ``filterprune.py``,
  criterion ``ICLR``: ``sum(output * grad, dim=(0, 2, 3)) / (B * H * W)``
  at each ``nn.Conv2d``'s output, added over batches, |.| at the end.
  """

  value: ClassVar[str] = 'taylor'
  name: ClassVar[str] = 'taylor'


@dataclasses.dataclass(frozen=True)
class GradientLogit(Gradient):
  """``Gradient`` as pxp_jax defined it first: the label logit's gradient at
  the mask site (after a conv's BatchNorm), |mean over positions| per sample,
  summed over samples."""

  loss: str = 'logit'
  before_norm: bool = False
  abs_per_sample: bool = True
  name: ClassVar[str] = 'gradient_logit'


@dataclasses.dataclass(frozen=True)
class TaylorLogit(Taylor):
  """``Taylor`` as pxp_jax defined it first: activation x the label logit's
  gradient at the mask site, |mean over positions| per sample, summed."""

  loss: str = 'logit'
  before_norm: bool = False
  abs_per_sample: bool = True
  name: ClassVar[str] = 'taylor_logit'


@dataclasses.dataclass(frozen=True)
class IntegratedGradients(_AtTheUnits):
  """Integrated gradients at the units, from a zero input.

  Both forms use the path-averaged gradient of the label logit ``f_y`` (a
  one-hot at the label) with respect to the unit's output ``a``, on the
  straight path from the zero input to x, in ``steps`` (m) points
  alpha_k = k/m, k = 1..m (a right Riemann sum; the endpoint x included, the
  baseline not):

    g_{n,p,u} = (1/m) sum_{k=1..m} d f_y / d a_{p,u} (alpha_k x_n)

  - ``form='reference'`` (default): the 2024 PXP reference's unit score, the
    path-averaged gradient alone (not multiplied by any activation):
    filters ``sum_n |sum_{h,w} g|``, neurons ``sum_n sum_t |g_t|`` (|.| per
    token), heads ``sum_n sum_q |sum_keys g_{h,q,key}|`` (|.| per query).
    Source: ``pxp/attribute.py`` of
    erfanhatefi/Pruning-by-eXplaining-in-PyTorch,
    ``IntegratedGradientLatentAttributorZennit``: 20 steps at
    ``torch.linspace(1/20, 1, 20)``, zero baseline, ``grad_outputs`` one at
    the target logit; each step's gradient at the hooked module's output is
    summed over (H, W) for ``Conv2d``, kept per token for ``Linear``,
    summed over keys and transposed to (batch, query, head) for the
    softmax, and averaged over the steps; ``ComponentAttibution.attribute``
    then takes ``abs`` (``abs_flag=True``) and sums over the batch and the
    tokens / queries. A conv is hooked at its own output, before its
    BatchNorm (``before_norm``).
  - ``form='conductance'``: the unit's conductance (Dhamdhere et al., 2019,
    "How important is a neuron?"; the integrated gradients of Sundararajan
    et al., 2017, taken through the unit):
    ``sum_n |sum_p (a_{p,u}(x_n) - a_{p,u}(0)) g_{n,p,u}|``, summed over
    every position (space, tokens, or queries and keys), |.| per sample. A
    BatchNorm is affine per channel, so this form is the same before or
    after it.

  Attributes:
    steps: m, the path points (the reference: 20).
    form: ``reference`` or ``conductance``.
    before_norm: as in ``Gradient``.
  """

  steps: int = 20
  form: str = 'reference'
  before_norm: bool = True
  name: ClassVar[str] = 'integrated_gradients'

  def __post_init__(self):
    if self.form not in IG_FORMS:
      raise ValueError(f'{self.name}: unknown form {self.form!r}; use one of '
                       f'{IG_FORMS}')
    if self.steps < 1:
      raise ValueError(f'{self.name}: steps must be >= 1, got {self.steps}')

  def _program(self):
    value = 'path_gradient' if self.form == 'reference' else 'conductance'
    return dict(value=value, loss='logit', before_norm=self.before_norm,
                steps=self.steps)

  def _transforms(self):
    # the reference form's |.| per token is taken in the program
    return dict(per_sample=np.abs if self.form == 'conductance' else None)


REGISTRY: dict[str, type[Criterion]] = {
    c.name: c for c in (LRP, Random, Weight, Gradient, Taylor,
                        IntegratedGradients, GradientLogit, TaylorLogit)}
# One criterion per method, the job's default set; REGISTRY also holds the
# variants.
CRITERIA = ('lrp', 'random', 'weight', 'gradient', 'taylor',
            'integrated_gradients')


def get(name: str, **options) -> Criterion:
  """A criterion by name (``REGISTRY``: ``CRITERIA`` and their variants)
  with its options."""
  if name not in REGISTRY:
    raise ValueError(f'unknown criterion {name!r}; use one of '
                     f'{", ".join(REGISTRY)}')
  cls = REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(options) - fields
  if unknown:
    raise TypeError(f'criterion {name!r} takes {sorted(fields) or "no options"}'
                    f', not {sorted(unknown)}')
  return cls(**options)


def _summed(per_batch: Callable, images, labels, units, batch_size, name, *,
            per_sample: Callable | None = None,
            final: Callable | None = None, mesh=None) -> Scores:
  """unit key -> ``final(sum_n per_sample(v_n))``, both the identity unless
  given, where ``per_batch(x, t)`` returns unit key -> (batch, units) values
  ``v_n`` per sample. The samples go in batches of ``batch_size`` (rounded
  up to a multiple of the mesh's data axis); the last batch is padded with
  copies of the last sample (the same shapes: one compiled program for any
  count) whose values are dropped before the sum. With a ``mesh`` each
  batch is split over its data axis, each process reading its own part.
  The sums run on the host in float64."""
  totals = {k: np.zeros(u.size) for k, u in units.items()}
  labels = np.asarray(labels)  # images: an array, or data.Images read lazily
  count = len(labels)
  if labels.ndim != 1 or not count:
    raise ValueError(f'{name}: labels must be a non-empty (N,) vector, got '
                     f'shape {labels.shape}; score units on at least one '
                     'reference sample')
  if len(images) != count:
    raise ValueError(f'{name}: {len(images)} images but {count} labels; give '
                     'one label per image')
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or (
      batch_size < 1):
    raise ValueError(f'{name}: batch_size must be an integer >= 1, got '
                     f'{batch_size!r}')
  if mesh is not None:
    step = distribute.batch_multiple(mesh)
    batch_size = -(-batch_size // step) * step
  for start in range(0, count, batch_size):
    if mesh is None:
      rows = slice(start, min(start + batch_size, count))
    else:  # this process's part of the global batch
      part = distribute.process_rows(batch_size)
      rows = slice(min(start + part.start, count),
                   min(start + part.stop, count))
    x, t = images[rows], labels[rows]
    size = batch_size if mesh is None else part.stop - part.start
    if len(t) < size:  # pad: same shapes, same compiled program
      last = slice(count - 1, count)
      x = np.concatenate([x, np.repeat(images[last], size - len(t), 0)])
      t = np.concatenate([t, np.repeat(labels[last], size - len(t), 0)])
    if mesh is None:
      x, t = jnp.asarray(x), jnp.asarray(t)
    else:
      batch = distribute.global_batch(dict(x=x, t=t), mesh, batch_size)
      x, t = batch['x'], batch['t']
    values = per_batch(x, t)
    valid = min(batch_size, count - start)
    for k in units:
      v = distribute.to_host(values[k]).astype(np.float64)[:valid]
      totals[k] += (v if per_sample is None else per_sample(v)).sum(0)
  if final is not None:
    totals = {k: final(v) for k, v in totals.items()}
  bad = [k for k, v in totals.items() if not np.all(np.isfinite(v))]
  if bad:
    raise FloatingPointError(f'{name} scores are NaN or infinite for '
                             f'{", ".join(bad[:5])}')
  return totals


def _reduce(values, unit: structure.Unit, how: str):
  """A unit layer's per-sample values (B, ..., units) -> (B, units).

  ``how``: ``mean`` or ``sum`` over all positions (space, tokens, or a
  head's queries and keys); ``abs_tokens``: |.| per token, then summed (a
  conv's space is summed first, one token; a head's keys are summed first,
  one token per query)."""
  if unit.spans == 'queries':  # (B, heads, queries, keys)
    if how == 'abs_tokens':
      return jnp.abs(values.sum(3)).sum(2)
    return values.mean((2, 3)) if how == 'mean' else values.sum((2, 3))
  flat = values.reshape(values.shape[0], -1, values.shape[-1])
  if how == 'mean':
    return flat.mean(1)
  if how == 'sum':
    return flat.sum(1)
  if unit.spans == 'space':
    return jnp.abs(flat.sum(1))
  return jnp.abs(flat).sum(1)


def _sensitivity(model, variables, units, *, value: str, loss: str = 'logit',
                 before_norm: bool = False, steps: int = 0):
  """A jitted (images, labels) -> unit key -> (B, units) per-sample values.

  ``value``: ``gradient`` (mean over positions of dL/da), ``taylor`` (mean
  of a dL/da), ``path_gradient`` (the path-averaged gradient, |.| per token,
  summed) or ``conductance`` ((a(x) - a(0)) x the path-averaged gradient,
  summed over positions), with ``a`` a unit's output at its site, or at its
  layer if ``before_norm`` (a conv before its BatchNorm), and ``L`` the
  summed ``loss`` of the samples (``cross_entropy`` of their labels, or
  their label ``logit``s); the path ones take ``steps`` points.
  """
  probes = {(u.layer if before_norm else u.site): k for k, u in units.items()}

  def probed(x, labels, additive):
    """The summed loss with ``additive`` added to the outputs at the probes,
    and those outputs."""
    acts = {}

    def tap(call, proceed):
      out = proceed()
      key = probes.get(call.path)
      if key is None:
        return out
      acts[key] = out
      return out + additive[key]

    logits = taps.apply(model, variables, x, taps=[tap])
    if loss == 'cross_entropy':
      logits = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(logits, labels[:, None], 1).sum()
    return (-picked if loss == 'cross_entropy' else picked), acts

  @jax.jit
  def run(x, labels):
    found = structure.trace(model, variables, x.shape, x.dtype)
    zeros = {k: jnp.zeros(found.shape_of(path), x.dtype)
             for path, k in probes.items()}
    grad_fn = jax.grad(lambda x, p: probed(x, labels, p), argnums=1,
                       has_aux=True)
    if value in ('gradient', 'taylor'):
      grads, acts = grad_fn(x, zeros)
      if value == 'taylor':
        grads = {k: grads[k] * acts[k] for k in units}
      return {k: _reduce(grads[k], units[k], 'mean') for k in units}

    def step(total, alpha):
      grads, _ = grad_fn(alpha * x, zeros)
      return jax.tree.map(jnp.add, total, grads), None

    alphas = jnp.arange(1, steps + 1, dtype=x.dtype) / steps  # k/m, k=1..m
    total, _ = jax.lax.scan(step, zeros, alphas)
    path_grads = {k: total[k] / steps for k in units}
    if value == 'path_gradient':
      return {k: _reduce(path_grads[k], units[k], 'abs_tokens')
              for k in units}
    _, base = probed(jnp.zeros_like(x), labels, zeros)
    _, end = probed(x, labels, zeros)
    return {k: _reduce((end[k] - base[k]) * path_grads[k], units[k], 'sum')
            for k in units}

  return run
