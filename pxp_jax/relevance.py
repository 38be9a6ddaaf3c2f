"""attribute(): input heatmaps and per-unit relevance by LRP.

The model is run unchanged except that every operation's call is intercepted
(``flax.linen.intercept_methods``) and replaced by the same computation whose
backward pass is the rule the composite gives it (``pxp_jax.rules``), with
BatchNorms folded first (``pxp_jax.canonize``). Relevance then is one VJP:
the cotangent at a tensor ``a`` carries ``R_a = a * cotangent``.

Unit relevance is read with multiplicative probes, arrays of ones at each
unit's output (conv filters, dense neurons, attention heads at the softmax):
the cotangent of a probe is ``sum(a * cotangent)`` over the positions it
spans, i.e. the unit's relevance. The same probes, set to 0 or 1, are the
pruning masks (``pxp_jax.pruning``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import canonize, composites, rules, structure

INITS = ('one_hot', 'logit')


@flax.struct.dataclass
class Attribution:
  """The result of ``attribute``.

  Attributes:
    logits: (batch, classes) model outputs.
    input: input relevance, the shape of the inputs (sum over channels for a
      heatmap); None when not asked for (``input_relevance=False``).
    units: unit key -> (batch, units) relevance: conv filters (summed over
      space) and dense neurons (summed over tokens) keyed by the layer's path,
      attention heads (at the softmax output, summed over queries and keys)
      keyed by the attention module's path.
  """

  logits: jax.Array
  input: jax.Array | None
  units: dict[str, jax.Array]


def attribute(model: nn.Module, variables, inputs, targets,
              composite: composites.Composite, *, init: str = 'one_hot',
              absolute_tokens: bool = False, dynamic_rules: bool = False,
              input_relevance: bool = True,
              check_finite: bool = True) -> Attribution:
  """LRP relevance of ``targets`` for a batch of inputs.

  Args:
    model: a flax model built from ``pxp_jax.models`` operations.
    variables: its variables (BatchNorms are folded here; pass them raw).
    inputs: (batch, H, W, C) float images.
    targets: (batch,) int class to explain per input.
    composite: which rule applies where (``pxp_jax.composites``).
    init: ``'one_hot'`` starts from relevance 1 at the target class (the PXP
      reference's choice), ``'logit'`` from the target logit.
    absolute_tokens: for units that span tokens (ViT dense layers and heads),
      sum ``|R|`` over tokens (queries) instead of ``R``, as the PXP reference
      does for ViTs.
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
  result = _attribute(model, variables, inputs, targets, composite, init,
                      absolute_tokens,
                      None if dynamic_rules else _fixed_rules(composite),
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


def _fixed_rules(composite) -> tuple[int | None, ...] | None:
  """The linear-rule id of each entry, or None if any is not concrete."""
  ids = []
  for rule in composite.rules:
    if not isinstance(rule, rules.LinearRule):
      ids.append(None)
    elif isinstance(rule.rule, jax.core.Tracer):
      return None
    else:
      ids.append(int(rule.rule))
  return tuple(ids)


@functools.partial(jax.jit, static_argnames=('model', 'init',
                                             'absolute_tokens', 'fixed_rules',
                                             'with_input'))
def _attribute(model, variables, inputs, targets, composite, init,
               absolute_tokens, fixed_rules, with_input):
  found = structure.trace(model, variables, inputs.shape, inputs.dtype)
  plan = _plan(found, composite)
  canonical = canonize.fold_traced(variables, found)
  units = found.units()
  probes = {key: jnp.ones(_probe_shape(op, absolute_tokens), inputs.dtype)
            for key, op in units.items()}
  input_probe = jnp.zeros_like(inputs)

  def forward(inputs, probes, input_probe):
    interceptor = _Interceptor(plan, composite, found, probes, input_probe,
                               inputs, fixed_rules)
    with nn.intercept_methods(interceptor):
      return model.apply(canonical, inputs)

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
    if units[key].kind == 'Softmax':  # (batch, heads, queries or 1, 1)
      g = g.reshape(g.shape[:2] + (-1,)).swapaxes(1, 2)
    elif g.ndim > 2:  # (batch, [positions or] tokens or 1, units)
      g = g.reshape(g.shape[0], -1, g.shape[-1])
    if g.ndim == 3:
      g = jnp.sum(jnp.abs(g) if absolute_tokens else g, axis=1)
    out[key] = g
  return Attribution(logits=logits, input=input_relevance, units=out)


def _probe_shape(op: structure.Op, absolute_tokens: bool) -> tuple[int, ...]:
  """Ones broadcast against the unit's output: (B, 1, 1, C) for conv maps,
  (B, 1 or T, C) for token sequences, (B, H, 1 or Q, 1) for attention."""
  shape = op.shape
  if op.kind == 'Softmax':  # (B, heads, queries, keys)
    return (shape[0], shape[1], shape[2] if absolute_tokens else 1, 1)
  if len(shape) == 4:  # conv output (B, H, W, C)
    return (shape[0], 1, 1, shape[-1])
  if len(shape) == 3:  # tokens (B, T, C)
    return (shape[0], shape[1] if absolute_tokens else 1, shape[-1])
  return (shape[0], shape[-1])


def _plan(found: structure.Structure, composite) -> dict[str, int]:
  """Module path -> index of its composite entry; every leaf must have one."""
  linear = {op.path: i for i, op in enumerate(found.of_kind('Conv', 'Dense'))}
  by_kind: dict[str, list[str]] = {}
  for op in found.leaves:
    by_kind.setdefault(op.kind, []).append(op.path)
  plan, missing = {}, []
  for op in found.leaves:
    paths = by_kind[op.kind]
    entry = composite.entry_for(
        op.path, op.kind, is_first=op.path == next(iter(linear), None),
        position=(paths.index(op.path), len(paths)))
    if entry is None:
      missing.append(f'{op.path} ({op.kind})')
      continue
    rule = composite.rules[entry]
    if isinstance(rule, composites.Fold) and op.path not in found.folds:
      raise ValueError(
          f'BatchNorm {op.path} does not follow a conv or dense layer, so it '
          'cannot be folded; give it another rule in the composite')
    plan[op.path] = entry
  if missing:
    raise ValueError(
        'the composite gives no rule to these modules (a module without a '
        'rule would silently fall back to the plain gradient): '
        + ', '.join(missing) + '. Add entries that cover them, e.g. '
        "('name', Select(('Kind',)), rule).")
  return plan


# Module kinds whose output is >= 0 (always; or when all their inputs are),
# so that the layers after them skip the products of negative inputs.
_NON_NEGATIVE = frozenset({'ReLU', 'Softmax'})
_SIGN_KEEPING = frozenset({'MaxPool', 'AdaptiveAvgPool', 'GlobalAvgPool',
                           'Flatten', 'Sum'})


class _Interceptor:
  """Replaces each module call by its rule's computation."""

  def __init__(self, plan, composite, found, probes, input_probe, inputs,
               fixed_rules):
    self.plan = plan
    self.fixed_rules = fixed_rules
    self.composite = composite
    self.units = {op.path: key for key, op in found.units().items()}
    self.probes = probes
    self.input_probe = input_probe
    self.inputs = inputs
    self.non_negative = {}

  def __call__(self, f, args, kwargs, context):
    if context.method_name != '__call__':
      return f(*args, **kwargs)
    path = '.'.join(context.module.path)
    if path not in self.plan:  # a container: its operations are intercepted
      return f(*args, **kwargs)
    rule = self.composite.rules[self.plan[path]]
    out = self._apply(rule, context.module, f, args, kwargs)
    key = self.units.get(path)
    if key is not None:
      out = out * self.probes[key]
    kind = type(context.module).__name__
    if kind in _NON_NEGATIVE or (kind in _SIGN_KEEPING and all(
        self._non_negative(a) for a in args)):
      self.non_negative[id(out)] = out  # kept alive: ids stay unique
    return out

  def _non_negative(self, x) -> bool:
    """Whether ``x >= 0`` is known from the operations that made it."""
    return self.non_negative.get(id(x)) is x

  def _apply(self, rule, module, f, args, kwargs):
    if isinstance(rule, composites.Gradient):
      return f(*args, **kwargs)
    if isinstance(rule, composites.Fold):
      return args[0]  # folded into the layer before: the identity
    if isinstance(rule, rules.LinearRule):
      entry = self.plan['.'.join(module.path)]
      fixed = None if self.fixed_rules is None else self.fixed_rules[entry]
      return self._linear(rule, module, args[0], fixed)
    pure = _pure(module)
    if isinstance(rule, composites.Norm):
      return rules.norm(pure, tuple(args), rule.eps)
    if isinstance(rule, composites.Identity):
      return rules.identity(pure, args[0], rule.eps)
    if isinstance(rule, composites.LayerNormIdentity):
      params = module.variables.get('params', {})
      return rules.layer_norm(args[0], params.get('scale'), params.get('bias'),
                              epsilon=module.epsilon, eps=rule.eps)
    if isinstance(rule, composites.HalfMatMul):
      return rules.matmul_half(args[0], args[1], rule.eps)
    if isinstance(rule, composites.StopRelevance):
      return pure(*[jax.lax.stop_gradient(a) for a in args])
    raise TypeError(f'no implementation for rule {type(rule).__name__}')

  def _linear(self, rule, module, x, fixed):
    params = module.variables['params']
    kernel = params['kernel']
    bias = params.get('bias')
    bare = module.clone(parent=None, use_bias=False, name=None)

    def apply(a, k):  # the layer's map for any in/out width of the kernel
      return bare.clone(features=k.shape[-1]).apply({'params': {'kernel': k}},
                                                    a)
    if bias is None:
      bias = jnp.zeros((kernel.shape[-1],), x.dtype)
    probe = self.input_probe if x is self.inputs else None
    return rules.linear(apply, x, kernel, bias, rule, probe, fixed,
                        signed=not self._non_negative(x))


def _pure(module):
  """A parameter-free module as a pure function of its arguments."""
  bare = module.clone(parent=None, name=None)
  return lambda *a: bare.apply({}, *a)


def input_heatmap(result: Attribution) -> jax.Array:
  """(batch, H, W) heatmaps: input relevance summed over channels."""
  return jnp.sum(result.input, axis=-1)


def conservation(result: Attribution) -> Mapping[str, jax.Array]:
  """Total relevance per sample at the input and at each unit layer; with
  biases zeroed and eps -> 0 these all equal the initial relevance."""
  out = {'input': jnp.sum(result.input.reshape(result.input.shape[0], -1), -1)}
  out.update({k: jnp.sum(v, -1) for k, v in result.units.items()})
  return out
