"""Each LRP rule against an explicit float64 matrix reference.

The references spell out the contributions ``z_ij`` of input i to output j
and distribute ``R_j`` in proportion, as the LRP papers and zennit define the
rules; the library computes the same with transposed products instead.
Both run in float64, and the seeded layers keep every output (with and
without bias) well away from 0, where the stabiliser's sign and Gamma's
``y > 0`` switch: numpy and XLA round the sums differently, but no sign can
flip. Tolerances are float64 rounding of the same sums in another order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from pxp_jax import rules
from pxp_jax.lrp import op_rules


@pytest.fixture(autouse=True)
def _float64(x64):
  del x64


def _away_from_zero(*outputs, margin=1e-3):
  """Fails if a seeded output is within ``margin`` of 0 (see above)."""
  for y in outputs:
    smallest = float(np.abs(y).min())
    assert smallest > margin, (
        f'a seeded output is {smallest:.1e} from 0, where a rule switches '
        'sign: change the seed')


def _stab(z, eps):
  return z + eps * np.where(z >= 0, 1.0, -1.0)


def _reference(name, x, w, b, r, eps, gamma=0.25, alpha=2.0, beta=1.0,
               low=-1.0, high=1.0, zero_bias=False):
  """Input relevance of a dense layer y = x @ w + b, one sample."""
  k = 0.0 if zero_bias else 1.0
  xp, xn = np.maximum(x, 0)[:, None], np.minimum(x, 0)[:, None]
  wp, wn = np.maximum(w, 0), np.minimum(w, 0)
  bp, bn = np.maximum(b, 0), np.minimum(b, 0)

  def spread(contrib, bias, where=1.0):
    """R_i = sum_j contrib_ij R_j / stab(sum_i contrib_ij + bias_j)."""
    return (contrib * (where * r / _stab(contrib.sum(0) + bias, eps))).sum(1)

  if name == 'epsilon':
    return spread(x[:, None] * w, k * b)
  if name == 'zplus':
    return spread(xp * wp + xn * wn, k * bp)
  if name == 'alpha_beta':
    return (alpha * spread(xp * wp + xn * wn, k * bp)
            - beta * spread(xp * wn + xn * wp, k * bn))
  if name == 'gamma':
    y = x @ w + b
    wgp, wgn = w + gamma * wp, w + gamma * wn
    return (spread(xp * wgp + xn * wgn, k * (b + gamma * bp), y > 0)
            + spread(xp * wgn + xn * wgp, k * (b + gamma * bn), y < 0))
  if name == 'zbox':
    lo, hi = np.full_like(x, low)[:, None], np.full_like(x, high)[:, None]
    return spread(x[:, None] * w - lo * wp - hi * wn, 0.0)
  if name == 'wsquare':
    return spread(w**2, k * b**2)
  if name == 'flat':
    return spread(np.ones_like(w), 0.0)
  raise ValueError(name)


def _ours(name, x, w, b, r, eps, **kwargs):
  rule = rules.linear_rule(name, eps=eps, **kwargs)
  apply = lambda a, k: a @ k  # noqa: E731
  y = x @ w + b

  def f(x, probe):
    return rules.linear(apply, x, w, b, rule, probe)

  _, vjp = jax.vjp(f, x, jnp.zeros_like(x))
  cotangent, input_relevance = vjp(r / y)  # R = y * cotangent at the output
  if name in ('epsilon', 'zplus', 'alpha_beta', 'gamma'):  # R_x = x * g too
    np.testing.assert_allclose(x * cotangent, input_relevance, atol=1e-12)
  return input_relevance


@pytest.fixture(name='layer')
def _layer():
  rng = np.random.default_rng(0)
  x = rng.normal(size=7)
  w = rng.normal(size=(7, 5))
  b = rng.normal(size=5) * 0.3
  r = rng.normal(size=5)
  _away_from_zero(x @ w + b, x @ w, np.maximum(x, 0) @ w + b,
                  np.maximum(x, 0) @ w, np.abs(x) @ w + b)
  return x, w, b, r


@pytest.mark.parametrize('name', rules.names())
@pytest.mark.parametrize('eps', [1e-6, 0.1])
@pytest.mark.parametrize('zero_bias', [False, True])
def test_dense_rule_matches_matrix_reference(layer, name, eps, zero_bias):
  x, w, b, r = layer
  kwargs = dict(zero_bias=zero_bias)
  if name == 'zbox':
    kwargs = dict(low=-1.0, high=1.0)
  elif name == 'flat':
    kwargs = {}
  np.testing.assert_allclose(
      _ours(name, x, w, b, r, eps, **kwargs),
      _reference(name, x, w, b, r, eps, **kwargs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('gamma', [0.0, 0.25, 1.0, 100.0])
def test_gamma_matches_reference_for_every_gamma(layer, gamma):
  x, w, b, r = layer
  np.testing.assert_allclose(_ours('gamma', x, w, b, r, 1e-6, gamma=gamma),
                             _reference('gamma', x, w, b, r, 1e-6, gamma=gamma),
                             rtol=1e-10, atol=1e-12)


def test_gamma_zero_is_epsilon_and_large_gamma_approaches_zplus(layer):
  x, w, b, r = layer
  x = np.abs(x)  # the original Gamma rule's setting: non-negative inputs
  eps = _ours('epsilon', x, w, b, r, 1e-6)
  np.testing.assert_allclose(_ours('gamma', x, w, b, r, 1e-6, gamma=0.0), eps,
                             rtol=1e-10)
  # ... for outputs with y > 0 (where y < 0 Gamma follows the negative part)
  r = np.where(x @ w + b > 0, r, 0.0)
  # not rounding: Gamma differs from z+ by O(1 / gamma) = 1e-6
  np.testing.assert_allclose(_ours('gamma', x, w, b, r, 1e-6, gamma=1e6),
                             _ours('zplus', x, w, b, r, 1e-6), rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize('name', ['zplus', 'alpha_beta', 'gamma'])
def test_rules_told_the_input_is_non_negative_match_the_reference(layer, name):
  """After a ReLU the rules skip the x- products (``signed=False``)."""
  x, w, b, r = layer
  x = np.maximum(x, 0)
  rule = rules.linear_rule(name, eps=1e-6)
  _, vjp = jax.vjp(lambda a, p: rules.linear(lambda a, k: a @ k, a, w, b, rule,
                                             p, signed=False),
                   x, jnp.zeros_like(x))
  np.testing.assert_allclose(vjp(r / (x @ w + b))[1],
                             _reference(name, x, w, b, r, 1e-6), rtol=1e-10,
                             atol=1e-12)


@pytest.mark.parametrize('name', ['epsilon', 'zplus', 'gamma', 'alpha_beta',
                                  'zbox', 'wsquare'])
@pytest.mark.slow
def test_conv_rule_equals_dense_rule_on_the_conv_matrix(name):
  """A conv is a dense layer with a structured matrix: the rule must agree."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 5, 5, 2))
  k = rng.normal(size=(3, 3, 2, 3))
  b = rng.normal(size=3) * 0.3
  conv = lambda a, kern: jax.lax.conv_general_dilated(  # noqa: E731
      a, kern, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = conv(x, k) + b
  _away_from_zero(y)
  r = rng.normal(size=y.shape)
  # The explicit matrix of the conv (inputs x outputs) and of its |.|+ parts.
  matrix = jax.jacobian(lambda a: conv(a.reshape(x.shape), k).ravel())(
      x.ravel()).T
  kwargs = dict(low=-1.0, high=1.0) if name == 'zbox' else {}
  rule = rules.linear_rule(name, eps=1e-6, **kwargs)
  _, vjp = jax.vjp(lambda a, p: rules.linear(conv, a, k, b, rule, p), x,
                   jnp.zeros_like(x))
  ours = vjp(r / y)[1]
  # The conv's positive/negative kernel parts are the matrix's parts.
  expected = _reference(name, x.ravel(), np.asarray(matrix),
                        np.broadcast_to(b, y.shape).ravel(), r.ravel(), 1e-6,
                        **kwargs)
  np.testing.assert_allclose(np.asarray(ours).ravel(), expected, rtol=1e-9,
                             atol=1e-12)


def test_epsilon_zero_is_the_gradient():
  """LRP-0 in gradient x input form is the plain gradient (Epsilon, eps=0)."""
  rng = np.random.default_rng(2)
  w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
  rule = rules.epsilon(0.0)
  f = lambda x: jnp.sum(jnp.sin(rules.linear(lambda a, k: a @ k, x, w, b,  # noqa: E731
                                             rule)))
  check_grads(f, (rng.normal(size=(2, 4)),), order=1, modes=['rev'])
  g = lambda a, c: jnp.sum(jnp.sin(op_rules.norm(jnp.add, (a, c), 0.0)))  # noqa: E731
  check_grads(g, (rng.normal(size=3), rng.normal(size=3)), order=1,
              modes=['rev'])


def test_matmul_half_splits_relevance_evenly():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 5))
  y = a @ b
  r = rng.normal(size=y.shape)
  _, vjp = jax.vjp(lambda a, b: op_rules.matmul_half(a, b, 0.0), a, b)
  ga, gb = vjp(r / y)
  # AttnLRP Prop. 3.3: R_a = a * ([R / 2y] b^T), R_b = b * (a^T [R / 2y]).
  np.testing.assert_allclose(a * ga, a * ((r / (2 * y)) @ b.swapaxes(1, 2)),
                             rtol=1e-10)
  np.testing.assert_allclose(b * gb, b * (a.swapaxes(1, 2) @ (r / (2 * y))),
                             rtol=1e-10)
  np.testing.assert_allclose((a * ga).sum() + (b * gb).sum(), r.sum(),
                             rtol=1e-10)


def test_identity_rule_passes_relevance_through_gelu():
  x = jnp.linspace(-3, 3, 11) + 0.05  # gelu(0) = 0 carries no relevance
  r = jnp.arange(11.0)
  gelu = lambda v: jax.nn.gelu(v, approximate=False)  # noqa: E731
  _, vjp = jax.vjp(lambda v: op_rules.identity(gelu, v, 1e-12), x)
  np.testing.assert_allclose(x * vjp(r / gelu(x))[0], r, rtol=1e-8, atol=1e-9)


@pytest.mark.slow
def test_layer_norm_rule_is_epsilon_with_constant_std():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 6))
  scale, bias = rng.normal(size=6), np.zeros(6)
  y = op_rules.layer_norm(x, scale, bias, epsilon=1e-6, eps=1e-12)
  r = rng.normal(size=y.shape)
  _, vjp = jax.vjp(lambda v: op_rules.layer_norm(v, scale, bias,
                                                 epsilon=1e-6, eps=1e-12), x)
  relevance = x * vjp(r / y)[0]
  # With 1/std constant, y = C x per token (C = centring times scale/std):
  # Epsilon on that linear map, with no bias, conserves per token.
  inv = 1 / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  for t in range(3):
    c = (np.eye(6) - 1 / 6) * inv[t] * scale[None, :]   # y_t = x_t @ c
    contrib = x[t][:, None] * c
    expected = (contrib * (r[t] / contrib.sum(0))).sum(1)
    np.testing.assert_allclose(relevance[t], expected, rtol=1e-8)
  np.testing.assert_allclose(relevance.sum(-1), r.sum(-1), rtol=1e-8)


def test_unknown_rule_and_bad_alpha_beta_are_clear_errors():
  with pytest.raises(ValueError, match='unknown linear-layer rule.*epsilon'):
    rules.linear_rule('epsilon_plus')
  with pytest.raises(ValueError, match='alpha - beta must be 1'):
    rules.alpha_beta(2.0, 2.0)


def test_rules_round_trip_through_json():
  """A rule's JSON holds its name and the hyperparameters it reads."""
  import json  # pylint: disable=g-import-not-at-top
  chosen = [rules.epsilon(0.1, zero_bias=True), rules.zplus(),
            rules.alpha_beta(3.0, 2.0), rules.gamma(0.5, eps=1e-3),
            rules.zbox(-1.0, 2.0), rules.flat(), rules.wsquare(),
            rules.Norm(1e-3), rules.Gradient(), rules.StopRelevance()]
  for rule in chosen:
    spec = json.loads(json.dumps(rules.to_json(rule)))
    assert rules.to_json(rules.from_json(spec)) == spec, spec
  assert rules.to_json(rules.gamma(0.5, eps=1e-3)) == {
      'rule': 'gamma', 'gamma': 0.5, 'eps': 1e-3, 'zero_bias': False}
  assert set(rules.searchable()) <= set(rules.names())
  with pytest.raises(ValueError, match='needs a "rule" name'):
    rules.from_json({'eps': 0.1})
