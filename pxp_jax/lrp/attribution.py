"""attribute(): input heatmaps and per-unit relevance by LRP.

The model runs unchanged except for three taps (``pxp_jax.models.taps``): each
operation is computed by its composite rule, whose backward pass is the LRP
rule (``pxp_jax.lrp.rules``), after the composite's canonisers (BatchNorm
folding); each unit site's output is multiplied by a probe of ones (times the
pruning mask, if any); and whether an operation's output is non-negative is
tracked so that rules skip the products of negative inputs. Relevance is then
one VJP: the cotangent at a tensor ``a`` carries ``R_a = a * cotangent``, and
the cotangent of a probe is the relevance of its unit, summed over the
positions it spans.

``precision='bfloat16'`` runs that forward and backward pass in bfloat16
(inputs and canonised variables cast inside the compiled program) while the
units' relevance is formed and summed in float32; ``remat=True`` recomputes
each block's activations in the backward pass (the model's ``remat``
attribute: flax's ``nn.remat`` per ResNet block, VGG conv stage or ViT
encoder block) instead of keeping them, for large batches on one device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import flax.errors
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax.models import structure, taps
from pxp_jax.lrp import linear_rules, linear_vjp
from pxp_jax.lrp.composite import Composite
from pxp_jax.models import kinds, spec as spec_lib

INITS = ('one_hot', 'logit')
PRECISIONS = ('float32', 'bfloat16')


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
              composite: Composite, *, masks=None,
              init: str = 'one_hot', absolute_tokens: bool = False,
              dynamic_rules: bool = False, input_relevance: bool = True,
              check_finite: bool = True, precision: str | None = None,
              remat: bool = False) -> Attribution:
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
    precision: the dtype of the relevance pass, ``PRECISIONS``: the inputs
      and the (canonised) floating variables are cast to it inside the
      compiled program, so the forward pass and the rules' backward pass
      run in it; None (default) keeps the inputs' dtype. With
      ``'bfloat16'`` the products and divisions of the rules run in
      bfloat16 (LayerNorm, GELU's identity rule and the z+ softmax rules
      in float32, as flax computes a LayerNorm's statistics), while each
      unit's relevance ``a * cotangent`` at its site is formed and summed
      over positions, tokens and queries in float32: ``units``, ``input``
      and ``logits`` come back as float32. On the shipped models bfloat16
      keeps the ranking of units (Spearman 0.9999 or more against float32,
      README "Precision and memory"); on CPU it is no faster.
    remat: recompute each block's activations during the backward pass
      instead of keeping them (``jax.checkpoint`` per block, through the
      model's ``remat`` attribute: ``pxp_jax.models``' ResNet, VGG and ViT
      have one; for a model of your own, give it one that wraps its blocks
      in ``nn.remat``). The same relevance with less memory for about one
      more forward pass.

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
  check_precision(precision, allow_none=True)
  if not isinstance(remat, (bool, np.bool_)) and remat not in (0, 1):
    raise TypeError(f'remat must be True or False, got {remat!r}')
  if remat and 'remat' not in getattr(model, '__dataclass_fields__', {}):
    raise ValueError(
        f'remat=True needs a model with a remat attribute (pxp_jax.models\' '
        f'ResNet, VGG and ViT); {type(model).__name__} has none: give it one '
        'that wraps its blocks in flax.linen.remat, or pass remat=False')
  if not isinstance(model, nn.Module):
    raise TypeError(f'model must be a flax.linen Module, got '
                    f'{type(model).__name__}; load one with '
                    'pxp_jax.checkpoints.load or pxp_jax.models.create')
  _check_variables(variables)
  inputs = jnp.asarray(inputs)
  targets = jnp.asarray(targets)
  _check_arguments(inputs, targets)
  if not isinstance(composite, Composite):
    raise TypeError(f'composite must be a pxp_jax.composites.Composite, got '
                    f'{type(composite).__name__}; see pxp_jax.composites.get')
  composite = composite.with_family_rules(spec_lib.spec_for(model))
  _check_bounds(composite, inputs.shape[-1])
  try:
    if masks is not None:
      if not isinstance(masks, Mapping):
        raise TypeError(f'masks must map unit keys to (units,) arrays, got '
                        f'{type(masks).__name__}')
      masks = {k: jnp.asarray(v) for k, v in masks.items()}
      found = structure.trace(model, variables, inputs.shape, inputs.dtype)
      found.sites(masks)  # a clear error for unknown unit keys
      _check_masks(masks, found)
    result = _attribute(model, variables, inputs, targets, composite, masks,
                        init, jnp.asarray(absolute_tokens, bool),
                        None if dynamic_rules else fixed_rules(composite),
                        input_relevance, precision, bool(remat))
  except flax.errors.FlaxError as error:
    _raise_if_mismatched(model, variables, inputs, error)
    raise
  if not isinstance(targets, jax.core.Tracer) and _on_this_process(targets):
    num_classes = result.logits.shape[-1]
    if np.any((np.asarray(targets) < 0) | (np.asarray(targets) >= num_classes)):
      raise ValueError(f'targets must lie in [0, {num_classes}) for this '
                       f'model, got {np.asarray(targets).tolist()}')
  if (check_finite and not isinstance(result.logits, jax.core.Tracer)
      and _on_this_process(result.logits)):
    _raise_if_not_finite(result, inputs)
    if init == 'one_hot':
      target_logits = np.take_along_axis(np.asarray(result.logits),
                                         np.asarray(targets)[:, None], 1)
      if np.any(target_logits == 0):
        raise FloatingPointError(
            'a target logit is exactly 0, so relevance 1 at it has no '
            'gradient x input form (R = y * g): use init="logit", or check '
            'the model (an untrained zero-initialised head gives 0 logits)')
  return result


def _on_this_process(x) -> bool:
  """Whether this process can read ``x`` whole (not a batch split over
  several processes' devices)."""
  return x.is_fully_addressable or x.is_fully_replicated


def check_precision(precision, allow_none: bool = False):
  """A clear error unless ``precision`` is one of ``PRECISIONS`` (or None
  where that means the inputs' dtype)."""
  if (precision is None and allow_none) or precision in PRECISIONS:
    return
  raise ValueError(f'unknown precision {precision!r}; use one of '
                   f'{PRECISIONS}' + (' or None' if allow_none else ''))


def _check_variables(variables):
  """``variables`` is a flax variables dict: ``{'params': ..., ...}``."""
  if not isinstance(variables, Mapping):
    raise TypeError(f'variables must be the model\'s variables dict '
                    f'({{"params": ..., "batch_stats": ...}}), got '
                    f'{type(variables).__name__}')
  if 'params' not in variables:
    hint = (' (it looks like the params alone: pass {"params": params, ...})'
            if variables else '')
    raise ValueError(f'variables must hold a "params" collection, got keys '
                     f'{sorted(variables)[:8]}{hint}')


def _raise_if_mismatched(model, variables, inputs, error):
  """A ValueError listing the variables ``model`` lacks, does not know, or
  holds in another shape, when running it with ``variables`` failed
  (``error``); nothing when they match (``error`` is raised as it is)."""
  try:
    expected = jax.eval_shape(model.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, *inputs.shape[1:]),
                                                   inputs.dtype))
  except Exception:  # pylint: disable=broad-except
    return  # the model cannot run on these inputs at all: flax's error
  flat = lambda tree: {  # noqa: E731
      '/'.join(str(getattr(k, 'key', k)) for k in path): np.shape(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, got = flat(expected), flat(variables)
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  shapes = sorted(f'{k} {got[k]} (expected {want[k]})'
                  for k in set(want) & set(got) if want[k] != got[k])
  if not (missing or unexpected or shapes):
    return
  parts = [f'{name}: {", ".join(items[:8])}'
           + (f' and {len(items) - 8} more' if len(items) > 8 else '')
           for name, items in (('missing', missing),
                               ('unexpected', unexpected),
                               ('wrong shape', shapes)) if items]
  raise ValueError(
      f'variables do not match the model {type(model).__name__} ('
      + '; '.join(parts) + '); pass the variables of this model (e.g. '
      'both from pxp_jax.checkpoints.load)') from error


def _check_masks(masks, found):
  """Each mask is ``(units,)`` for its unit."""
  units = found.units()
  bad = [f'{k}: {tuple(m.shape)} (expected ({units[k].size},))'
         for k, m in masks.items() if tuple(m.shape) != (units[k].size,)]
  if bad:
    raise ValueError(f'masks must be (units,) arrays, got {", ".join(bad)}')


def _check_bounds(composite, channels: int):
  """The bounds of ZBox rules are scalars or one per input channel."""
  for name, rule in zip(composite.names, composite.rules):
    if not isinstance(rule, linear_rules.LinearRule):
      continue
    for field in ('low', 'high'):
      shape = np.shape(getattr(rule, field))
      if shape and shape[-1] not in (1, channels):
        raise ValueError(
            f'entry {name!r}: {field} has {shape[-1]} values but the inputs '
            f'have {channels} channels; give one bound, or one per channel')


def _check_arguments(inputs, targets):
  if inputs.ndim != 4:
    raise ValueError(f'inputs must be a batch of NHWC images, got shape '
                     f'{inputs.shape}')
  if inputs.shape[0] == 0:
    raise ValueError(f'inputs hold no images (shape {inputs.shape}); give at '
                     'least one')
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise TypeError(f'inputs must be float images, got {inputs.dtype}')
  if targets.shape != inputs.shape[:1]:
    raise ValueError(f'targets must have shape ({inputs.shape[0]},), one class '
                     f'per input, got {targets.shape}')
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f'targets must be integer class indices, got '
                    f'{targets.dtype}')


def _raise_if_not_finite(result: Attribution, inputs):
  bad = [k for k, v in result.units.items() if not np.all(np.isfinite(v))]
  if bad or (result.input is not None
             and not np.all(np.isfinite(result.input))):
    if _on_this_process(inputs):
      images = np.flatnonzero(~np.isfinite(np.asarray(inputs)).reshape(
          inputs.shape[0], -1).all(-1))
      if images.size:
        raise ValueError(f'inputs hold NaN or infinite values (images '
                         f'{images[:10].tolist()} of the batch)')
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


def _relevance_forward(model, variables, inputs, composite, masks, fixed,
                       precision, remat):
  """The forward pass whose VJP is the relevance: ``forward(inputs, probes,
  input_probe)`` -> logits, with its arguments, and the structure, units
  and accumulation dtype."""
  found = structure.trace(model, variables, inputs.shape, inputs.dtype)
  plan = composite.plan(found, spec_lib.spec_for(model))
  canonical = composite.canonize(variables, found)  # folded in full precision
  if precision is not None:
    canonical = _cast(canonical, precision)
    inputs = inputs.astype(precision)
  # Unit relevance is formed and summed in this dtype (at least float32).
  accumulate = jnp.promote_types(inputs.dtype, jnp.float32)
  units = found.units()
  probes = {key: jnp.ones(_probe_shape(found, unit), accumulate)
            for key, unit in units.items()}
  input_probe = jnp.zeros_like(inputs)
  facts = _call_facts(model, canonical, inputs)
  applied = model.clone(remat=True) if remat else model

  def forward(inputs, probes, input_probe):
    context = _Context(plan, composite, fixed, facts, input_probe)
    at_sites = {units[key].site: probes[key] * (
        units[key].broadcast(masks[key].astype(accumulate))
        if masks is not None and key in masks else 1) for key in probes}
    return taps.apply(applied, canonical, inputs, taps=[
        _probe_tap(at_sites), context.tap])

  return forward, (inputs, probes, input_probe), found, units, accumulate


def residual_bytes(model, variables, inputs, composite, *,
                   precision: str | None = None, remat: bool = False) -> int:
  """Bytes of the arrays the relevance pass keeps from its forward pass for
  its backward pass (the leaves of its ``jax.vjp`` function; arguments
  included): with ``remat`` the blocks' inputs instead of every layer's
  operands. A property of the program on any backend, traced only
  (``inputs`` and ``variables`` may be ``jax.ShapeDtypeStruct``s). XLA's
  compiled temporary memory follows it where XLA keeps the recomputation
  (GPU, TPU); XLA on CPU does not (``benchmarks/README.md``)."""
  check_precision(precision, allow_none=True)
  sizes = []
  composite = composite.with_family_rules(spec_lib.spec_for(model))

  def measure(variables, inputs):
    forward, args, *_ = _relevance_forward(
        model, variables, inputs, composite, None, fixed_rules(composite),
        precision, remat)
    _, backward = jax.vjp(forward, *args)  # a pytree of its residuals
    kept = {id(a): a for a in jax.tree.leaves(backward)}  # each array once
    sizes.extend(a.size * a.dtype.itemsize for a in kept.values())

  jax.eval_shape(measure, variables, inputs)
  return int(sum(sizes))


@functools.partial(jax.jit, static_argnames=('model', 'init', 'fixed',
                                             'with_input', 'precision',
                                             'remat'))
def _attribute(model, variables, inputs, targets, composite, masks, init,
               absolute_tokens, fixed, with_input, precision, remat):
  forward, (inputs, probes, input_probe), found, units, accumulate = (
      _relevance_forward(model, variables, inputs, composite, masks, fixed,
                         precision, remat))
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
    input_relevance = grad_input_probe.astype(accumulate)
  else:
    input_relevance = (inputs.astype(accumulate)
                       * grad_inputs.astype(accumulate))
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
  return Attribution(logits=logits.astype(accumulate), input=input_relevance,
                     units=out)


def _cast(variables, dtype):
  """The floating leaves of ``variables`` as ``dtype``."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
      else a, variables)


def _probe_tap(factors: Mapping[str, jax.Array]):
  """``taps.scale`` for the unit probes: each site's output times its probe
  (ones, times the mask), whose cotangent, the units' relevance, is
  formed and summed in the probe's dtype (``_probed``)."""

  def tap(call, proceed):
    out = proceed()
    factor = factors.get(call.path)
    return out if factor is None else _probed(out, factor)
  return tap


@jax.custom_vjp
def _probed(out, factor):
  """``out * factor``, ``factor`` broadcast against ``out`` and cast to its
  dtype; the cotangent of ``factor`` is ``sum out * g`` over the broadcast
  axes computed in ``factor``'s dtype (float32 accumulation of a bfloat16
  pass), that of ``out`` is ``g * factor``."""
  return out * factor.astype(out.dtype)


def _probed_fwd(out, factor):
  return _probed(out, factor), (out, factor)


def _probed_bwd(residuals, g):
  out, factor = residuals
  relevance = out.astype(factor.dtype) * g.astype(factor.dtype)
  lead = relevance.ndim - factor.ndim
  axes = tuple(range(lead)) + tuple(
      lead + i for i, n in enumerate(factor.shape)
      if n == 1 and relevance.shape[lead + i] != 1)
  summed = jnp.sum(relevance, axis=axes, keepdims=True)
  return (g * factor.astype(g.dtype),
          summed.reshape(summed.shape[lead:]))


_probed.defvjp(_probed_fwd, _probed_bwd)


def _call_facts(model, variables, inputs) -> dict[str, tuple[bool, bool]]:
  """Module path -> (whether its first argument may be negative, whether it
  is the model input), over every call of the path, from one abstract run
  of ``model`` (no FLOPs). Known by path, these facts hold inside
  rematerialised blocks too, whose arguments are new arrays."""
  facts: dict[str, tuple[bool, bool]] = {}

  def run(variables, x):
    signs = _Signs()

    def record(call, proceed):
      first = call.args[0] if call.args else None
      signed = first is None or not signs.non_negative(first)
      seen = facts.get(call.path, (False, True))
      facts[call.path] = (seen[0] or signed, seen[1] and first is x)
      return proceed()
    return taps.apply(model, variables, x, taps=[signs.tap, record])

  abstract = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
  jax.eval_shape(run, jax.tree.map(abstract, variables), abstract(inputs))
  return facts


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
  """What a rule may ask about its call (``linear_vjp.apply_to_module``,
  an op rule's ``apply``): ``signed`` (its input may be negative),
  ``takes_input(call)`` (its input is the model input, whose relevance
  ``input_probe``'s cotangent carries). A linear rule is run by
  ``linear_vjp``, which reads ``linear_rules``' registry (and not the other
  way round); every other rule by its own ``apply``."""

  plan: dict
  composite: Composite
  fixed: tuple | None
  facts: Mapping[str, tuple[bool, bool]]
  input_probe: jax.Array
  signed: bool = True
  fixed_rule: int | None = None

  def takes_input(self, call) -> bool:
    return self.facts.get(call.path, (True, False))[1]

  def tap(self, call, proceed):
    entry = self.plan.get(call.path)
    if entry is None:  # a container: its operations are tapped
      return proceed()
    self.signed = self.facts.get(call.path, (True, False))[0]
    self.fixed_rule = None if self.fixed is None else self.fixed[entry]
    if (self.fixed_rule is not None and not self.takes_input(call)
        and linear_rules.definition(self.fixed_rule).input_space):
      raise ValueError(
          f'{call.path} takes the input-space rule '
          f'{linear_rules.definition(self.fixed_rule).name!r}, but its input '
          'is not the model input (preprocessing inside the model?); such a '
          'rule needs the raw input: give this layer another rule')
    rule = self.composite.rules[entry]
    if isinstance(rule, linear_rules.LinearRule):  # run by its VJP's module
      return linear_vjp.apply_to_module(call, rule, self)
    return rule.apply(call, proceed, self)


def conservation(result: Attribution) -> Mapping[str, jax.Array]:
  """Total relevance per sample at the input (if computed) and at each unit
  layer; with biases zeroed and eps -> 0 these all equal the initial
  relevance."""
  out = {} if result.input is None else {
      'input': jnp.sum(result.input.reshape(result.input.shape[0], -1), -1)}
  out.update({k: jnp.sum(v, -1) for k, v in result.units.items()})
  return out

