"""attribute(): input heatmaps and per-unit relevance by LRP.

The model runs unchanged except for three taps (``pxp_jax.taps``): each
operation is computed by its composite rule, whose backward pass is the LRP
rule (``pxp_jax.lrp.rules``), after the composite's canonisers (BatchNorm
folding); each unit site's output is multiplied by a probe of ones (times the
pruning mask, if any); and whether an operation's output is non-negative is
tracked so that rules skip the products of negative inputs. Relevance is then
one VJP: the cotangent at a tensor ``a`` carries ``R_a = a * cotangent``, and
the cotangent of a probe is the relevance of its unit, summed over the
positions it spans.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import structure, taps
from pxp_jax.lrp import composites, linear_rules
from pxp_jax.models import kinds, spec as spec_lib

INITS = ('one_hot', 'logit')


@flax.struct.dataclass
class Attribution:
  """The result of ``attribute``.

  Attributes:
    logits: (batch, classes) model outputs (of the masked model, if masks
      were given).
    input: input relevance, the shape of the inputs (sum over channels for a
      heatmap); None when not asked for (``input_relevance=False``).
    units: unit key -> (batch, units) relevance: conv filters (summed over
      space) and dense neurons (summed over tokens) keyed by the layer's path,
      attention heads (at the softmax output, summed over queries and keys)
      keyed by the attention module's path. Pruned units have relevance 0.
  """

  logits: jax.Array
  input: jax.Array | None
  units: dict[str, jax.Array]


def attribute(model, variables, inputs, targets,
              composite: composites.Composite, *, masks=None,
              init: str = 'one_hot', absolute_tokens: bool = False,
              dynamic_rules: bool = False, input_relevance: bool = True,
              check_finite: bool = True) -> Attribution:
  """LRP relevance of ``targets`` for a batch of inputs.

  Args:
    model: a flax model (``pxp_jax.models`` or any flax.linen classifier
      whose operations ``pxp_jax.models.kinds`` knows).
    variables: its variables (the composite's canonisers fold BatchNorms
      here; pass them raw).
    inputs: (batch, H, W, C) float images.
    targets: (batch,) int class to explain per input.
    composite: which rule applies where (``pxp_jax.composites``).
    masks: optional unit key -> (units,) pruning masks (0 prunes): relevance
      of the pruned model (``pxp_jax.prune``).
    init: ``'one_hot'`` starts from relevance 1 at the target class (the PXP
      reference's choice), ``'logit'`` from the target logit.
    absolute_tokens: for units that span tokens (dense layers over tokens
      and heads over queries), sum ``|R|`` over tokens instead of ``R``, as
      the PXP reference does for ViTs (a traced flag: either choice runs
      the same compiled program).
    dynamic_rules: compile one program for every choice of linear-layer rule
      (``LinearRule.rule`` read at run time): what a search over rules wants.
      By default the rule of each entry is fixed when the program is
      compiled, which runs about twice as fast on CPU and compiles in a
      fraction of the time; changing a rule then compiles again (once per
      choice), while eps, gamma, alpha, beta, low, high and the bias option
      never recompile in either mode. A composite passed in as traced values
      (inside ``jit``) always uses dynamic rules.
    input_relevance: False skips the input relevance (``input`` is None) and
      the backward pass through the input layer, when only the units' are
      wanted (pruning).
    check_finite: raise if a relevance is NaN or infinite (skipped when called
      inside a transformation such as ``jit``, where values are abstract).

  Returns:
    An ``Attribution`` with ``logits``, ``input`` and ``units``.

  Example::

    model, variables = pxp_jax.checkpoints.load('resnet_digits')
    result = attribute(model, variables, images, labels,
                       pxp_jax.composites.epsilon_plus())
    heatmaps = result.input.sum(-1)
  """
  if init not in INITS:
    raise ValueError(f'unknown init {init!r}; use one of {INITS}')
  inputs = jnp.asarray(inputs)
  targets = jnp.asarray(targets)
  _check_arguments(inputs, targets)
  if not isinstance(composite, composites.Composite):
    raise TypeError(f'composite must be a pxp_jax.composites.Composite, got '
                    f'{type(composite).__name__}; see pxp_jax.composites.get')
  if masks is not None:
    masks = {k: jnp.asarray(v) for k, v in masks.items()}
    found = structure.trace(model, variables, inputs.shape, inputs.dtype)
    found.sites(masks)  # a clear error for unknown unit keys
  result = _attribute(model, variables, inputs, targets, composite, masks,
                      init, jnp.asarray(absolute_tokens, bool),
                      None if dynamic_rules else fixed_rules(composite),
                      input_relevance)
  if not isinstance(targets, jax.core.Tracer):
    num_classes = result.logits.shape[-1]
    if np.any((np.asarray(targets) < 0) | (np.asarray(targets) >= num_classes)):
      raise ValueError(f'targets must lie in [0, {num_classes}) for this '
                       f'model, got {np.asarray(targets).tolist()}')
  if check_finite and not isinstance(result.logits, jax.core.Tracer):
    _raise_if_not_finite(result)
    if init == 'one_hot':
      target_logits = np.take_along_axis(np.asarray(result.logits),
                                         np.asarray(targets)[:, None], 1)
      if np.any(target_logits == 0):
        raise FloatingPointError(
            'a target logit is exactly 0, so relevance 1 at it has no '
            'gradient x input form (R = y * g): use init="logit", or check '
            'the model (an untrained zero-initialised head gives 0 logits)')
  return result


def _check_arguments(inputs, targets):
  if inputs.ndim != 4:
    raise ValueError(f'inputs must be a batch of NHWC images, got shape '
                     f'{inputs.shape}')
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise TypeError(f'inputs must be float images, got {inputs.dtype}')
  if targets.shape != inputs.shape[:1]:
    raise ValueError(f'targets must have shape ({inputs.shape[0]},), one class '
                     f'per input, got {targets.shape}')
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f'targets must be integer class indices, got '
                    f'{targets.dtype}')


def _raise_if_not_finite(result: Attribution):
  bad = [k for k, v in result.units.items() if not np.all(np.isfinite(v))]
  if bad or (result.input is not None
             and not np.all(np.isfinite(result.input))):
    raise FloatingPointError(
        'relevance is NaN or infinite (input'
        + (f' and units {", ".join(bad[:10])}' if bad else '') + '); a '
        'denominator is zero: use eps > 0, or check the inputs and weights')


def fixed_rules(composite) -> tuple[int | None, ...] | None:
  """The linear-rule id of each entry, or None if any is not concrete (the
  key of the compiled program: one per choice of rules)."""
  ids = []
  for rule in composite.rules:
    if not isinstance(rule, linear_rules.LinearRule):
      ids.append(None)
    elif isinstance(rule.rule, jax.core.Tracer):
      return None
    else:
      ids.append(int(rule.rule))
  return tuple(ids)


def compiled_programs() -> int:
  """How many relevance programs have been compiled in this process."""
  return _attribute._cache_size()  # pylint: disable=protected-access


@functools.partial(jax.jit, static_argnames=('model', 'init', 'fixed',
                                             'with_input'))
def _attribute(model, variables, inputs, targets, composite, masks, init,
               absolute_tokens, fixed, with_input):
  found = structure.trace(model, variables, inputs.shape, inputs.dtype)
  plan = composite.plan(found, spec_lib.spec_for(model))
  canonical = composite.canonize(variables, found)
  units = found.units()
  probes = {key: jnp.ones(_probe_shape(found, unit), inputs.dtype)
            for key, unit in units.items()}
  input_probe = jnp.zeros_like(inputs)

  def forward(inputs, probes, input_probe):
    signs = _Signs()
    context = _Context(plan, composite, fixed, signs, inputs, input_probe)
    at_sites = {units[key].site: probes[key] * (
        units[key].broadcast(masks[key].astype(inputs.dtype))
        if masks is not None and key in masks else 1) for key in probes}
    return taps.apply(model, canonical, inputs, taps=[
        signs.tap, taps.scale(at_sites), context.tap])

  if with_input:
    logits, vjp = jax.vjp(forward, inputs, probes, input_probe)
  else:  # no cotangent for the inputs: their backward pass is not built
    logits, probes_vjp = jax.vjp(
        lambda p: forward(inputs, p, input_probe), probes)
    vjp = lambda g: (None, *probes_vjp(g), None)  # noqa: E731
  num_classes = logits.shape[-1]
  one_hot = jax.nn.one_hot(targets, num_classes, dtype=logits.dtype)
  if init == 'one_hot':  # R = 1 at the target: cotangent R / y
    target_logit = jnp.sum(logits * one_hot, -1, keepdims=True)
    safe = jnp.where(target_logit == 0, 1, target_logit)
    cotangent = jnp.where(target_logit == 0, 0, one_hot / safe)
  else:  # R = y at the target: cotangent 1
    cotangent = one_hot
  grad_inputs, grad_probes, grad_input_probe = vjp(cotangent)
  if not with_input:
    input_relevance = None
  elif found.first_linear is not None:
    input_relevance = grad_input_probe
  else:
    input_relevance = inputs * grad_inputs
  out = {}
  for key, g in grad_probes.items():
    unit = units[key]
    if unit.spans == 'queries':  # (batch, heads, queries or 1, 1)
      g = g.reshape(g.shape[:2] + (-1,)).swapaxes(1, 2)
    elif g.ndim > 2:  # (batch, [positions or] tokens or 1, units)
      g = g.reshape(g.shape[0], -1, g.shape[-1])
    if g.ndim == 3:
      g = jnp.sum(jnp.where(absolute_tokens, jnp.abs(g), g), axis=1)
    if masks is not None and key in masks:
      g = g * masks[key]
    out[key] = g
  return Attribution(logits=logits, input=input_relevance, units=out)


def _probe_shape(found, unit: structure.Unit) -> tuple[int, ...]:
  """Ones broadcast against the site's output: (B, 1, 1, C) for conv maps
  (relevance summed over space), (B, T, C) for token sequences and (B, H,
  Q, 1) for attention (relevance per token or query, summed afterwards with
  or without the absolute value)."""
  shape = found.shape_of(unit.site)
  if unit.spans == 'queries':  # (B, heads, queries, keys)
    return (shape[0], shape[1], shape[2], 1)
  if unit.spans == 'space':  # (B, H, W, C)
    return (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],)
  return tuple(shape)  # tokens (B, T, C) or (B, C)


class _Signs:
  """Which arrays are known to be non-negative from the operations that
  made them (after a ReLU or a softmax, or sign-keeping operations of
  such): the rules of the layers after them skip negative-input products."""

  def __init__(self):
    self._known = {}

  def non_negative(self, x) -> bool:
    return self._known.get(id(x)) is x

  def tap(self, call, proceed):
    out = proceed()
    if call.kind in kinds.NON_NEGATIVE or (
        call.kind in kinds.SIGN_KEEPING
        and all(self.non_negative(a) for a in call.args)):
      self._known[id(out)] = out  # kept alive: ids stay unique
    return out


@dataclasses.dataclass
class _Context:
  """What a rule may ask about its call (``LinearRule.apply``)."""

  plan: dict
  composite: composites.Composite
  fixed: tuple | None
  signs: _Signs
  inputs: jax.Array
  input_probe: jax.Array
  signed: bool = True
  fixed_rule: int | None = None

  def tap(self, call, proceed):
    entry = self.plan.get(call.path)
    if entry is None:  # a container: its operations are tapped
      return proceed()
    self.signed = not (call.args and self.signs.non_negative(call.args[0]))
    self.fixed_rule = None if self.fixed is None else self.fixed[entry]
    if (self.fixed_rule is not None and call.args[0] is not self.inputs
        and linear_rules.definition(self.fixed_rule).input_space):
      raise ValueError(
          f'{call.path} takes the input-space rule '
          f'{linear_rules.definition(self.fixed_rule).name!r}, but its input '
          'is not the model input (preprocessing inside the model?); such a '
          'rule needs the raw input: give this layer another rule')
    return self.composite.rules[entry].apply(call, proceed, self)


def input_heatmap(result: Attribution) -> jax.Array:
  """(batch, H, W) heatmaps: input relevance summed over channels."""
  return jnp.sum(result.input, axis=-1)


def conservation(result: Attribution) -> Mapping[str, jax.Array]:
  """Total relevance per sample at the input and at each unit layer; with
  biases zeroed and eps -> 0 these all equal the initial relevance."""
  out = {'input': jnp.sum(result.input.reshape(result.input.shape[0], -1), -1)}
  out.update({k: jnp.sum(v, -1) for k, v in result.units.items()})
  return out
