"""The PXP reference's z+ softmax rules (``rules.SoftmaxZPlus``) and the four
attention options of ``composites.vit_groups``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pxp_jax
from pxp_jax import composites, models, rules
from pxp_jax.lrp import attribution, op_rules

EPS = 1e-6


def _stab(z, eps=EPS):
  return z + eps * np.where(z >= 0, 1.0, -1.0)


def _oracle(x, r, virtual_bias, eps=EPS):
  """Input relevance of softmax over the last axis, spelled out row by row as
  the PXP reference computes it (``IRefXGSoftmaxRuleVMAP``, reference point
  0): the full Jacobian and the contributions ``Z[i, j] = x_i J[i, j]``, the
  virtual bias ``S - sum_i Z[i, :]``, the positive parts, the stabilised
  division and the redistribution. float64 numpy, no closed form."""
  x, r = np.asarray(x, np.float64), np.asarray(r, np.float64)
  out = np.zeros_like(x)
  for row in np.ndindex(x.shape[:-1]):
    xr = x[row]
    e = np.exp(xr - xr.max())
    s = e / e.sum()
    jacobian = -np.outer(s, s)
    np.fill_diagonal(jacobian, s * (1 - s))
    z = xr[:, None] * jacobian  # z[i, j]: input i's share of output j
    bias = s - z.sum(0)
    zp = np.maximum(z, 0)
    den = zp.sum(0) + (np.maximum(bias, 0) if virtual_bias else 0)
    out[row] = (zp * (r[row] / _stab(den, eps))[None, :]).sum(1)
  return out


def _ours(x, r, virtual_bias, eps=EPS):
  """Our rule's input relevance: ``x * cotangent`` for the cotangent ``R / S``
  at the softmax output (gradient x input convention)."""
  s, vjp = jax.vjp(lambda v: op_rules.softmax_zplus(v, virtual_bias, eps), x)
  return np.asarray(x * vjp(r / s)[0])


def _scores(key, shape, scale):
  """Scores of both signs, some exactly 0, some rows peaked."""
  k1, k2 = jax.random.split(key)
  x = scale * jax.random.normal(k1, shape, jnp.float64)
  return jnp.where(jax.random.uniform(k2, shape) < 0.1, 0.0, x)


# What this covers: the closed form of op_rules.softmax_zplus (leave-one-out
# sums, cotangent without dividing by x, no (K, K) Jacobian) against the
# reference's literal per-row computation, with and without the virtual
# bias, on 4-d attention shapes (batch, heads, queries, keys) from 2 keys to
# ViT-B's 197, scores of both signs (and zeros) at three scales (flat to
# sharply peaked rows), relevance of both signs.
ORACLE_SHAPES = [(1, 1, 1, 2), (2, 3, 4, 7), (2, 2, 3, 16), (1, 2, 2, 197)]


@pytest.mark.parametrize('virtual_bias', [1.0, 0.0], ids=['vbias', 'no_bias'])
@pytest.mark.parametrize('shape', ORACLE_SHAPES, ids=str)
@pytest.mark.slow
def test_softmax_zplus_matches_the_reference_oracle(x64, shape, virtual_bias):
  del x64
  worst = 0.0
  for seed, scale in enumerate([0.3, 2.0, 8.0]):
    key = jax.random.key(100 * seed + shape[-1])
    x = _scores(key, shape, scale)
    for signed in (False, True):
      r = jax.random.uniform(jax.random.fold_in(key, 1), shape, jnp.float64)
      if signed:
        r = r - 0.4
      ours, oracle = _ours(x, r, virtual_bias), _oracle(x, r, virtual_bias)
      # Relative to the row's largest relevance (an entry may cancel to ~0).
      scale_of_row = np.abs(oracle).max(-1, keepdims=True)
      difference = np.abs(ours - oracle) / np.maximum(scale_of_row, 1e-300)
      worst = max(worst, float(difference.max()))
      # float64 rounding of the closed form against the literal sums
      np.testing.assert_allclose(ours, oracle, rtol=1e-12,
                                 atol=1e-12 * float(scale_of_row.min()),
                                 err_msg=f'scale {scale}, signed {signed}')
  assert worst < 1e-12, worst
  print(f'largest relative difference to the oracle: {worst:.2e}')


def test_softmax_zplus_in_float32_is_close_to_the_oracle():
  """A dominated row (one key with most of the weight, the others far below
  and negative): the sums that leave one key out keep the small remainder."""
  x = np.array([[-1.0] + [-20.0] * 9 + [-25.0] * 6, np.linspace(-3, 3, 16)],
               np.float32)
  r = np.full_like(x, 0.5)
  for virtual_bias in (0.0, 1.0):
    ours = _ours(jnp.asarray(x), jnp.asarray(r), virtual_bias)
    assert ours.dtype == np.float32
    # float32 rounding of the closed form's sums against the float64 oracle;
    # a softmax has no ties or switches to flip
    np.testing.assert_allclose(ours, _oracle(x, r, virtual_bias), rtol=2e-4,
                               atol=1e-6)


@pytest.mark.slow
def test_virtual_bias_matters_and_relevance_stays_non_negative(x64):
  del x64
  x = _scores(jax.random.key(7), (2, 3, 5, 11), 2.0)
  r = jax.random.uniform(jax.random.key(8), x.shape, jnp.float64)
  plain, biased = _ours(x, r, 0.0), _ours(x, r, 1.0)
  assert not np.allclose(plain, biased)
  assert np.all(plain >= 0) and np.all(biased >= 0)
  # Without the bias z+ conserves each row's relevance (once eps is
  # negligible against every den_j); the bias absorbs some of it.
  r = jax.nn.softmax(x, -1) * r  # as relevance arrives: R = S * g
  plain, biased = _ours(x, r, 0.0, 1e-14), _ours(x, r, 1.0, 1e-14)
  # float64; eps = 1e-14 absorbs ~1e-14 of each row
  np.testing.assert_allclose(plain.sum(-1), np.asarray(r).sum(-1), rtol=1e-8)
  assert np.all(biased.sum(-1) <= np.asarray(r).sum(-1) * (1 + 1e-12))
  assert np.any(biased.sum(-1) < 0.99 * np.asarray(r).sum(-1))
  # Masked keys (-inf scores, weight 0) get nothing and break nothing.
  masked = x.at[..., :3].set(-jnp.inf)
  for vb in (0.0, 1.0):
    s, vjp = jax.vjp(lambda v: op_rules.softmax_zplus(v, vb, EPS), masked)
    g = vjp(r / jnp.where(s > 0, s, 1))[0]
    assert np.all(np.isfinite(g)) and np.all(g[..., :3] == 0)


def test_softmax_zplus_rule_json_and_presets():
  rule = rules.SoftmaxZPlus(virtual_bias=0.0, eps=1e-5)
  spec = json.loads(json.dumps(rules.to_json(rule)))
  assert spec == {'rule': 'softmax_zplus', 'virtual_bias': 0.0, 'eps': 1e-5}
  assert rules.to_json(rules.from_json(spec)) == spec
  assert isinstance(rules.from_json(spec), composites.SoftmaxZPlus)
  assert composites.ATTENTION_RULES == ('attn_lrp', 'zplus_vbias', 'zplus',
                                        'cp_lrp')
  for attention, expected in [('attn_lrp', composites.Gradient),
                              ('zplus_vbias', composites.SoftmaxZPlus),
                              ('zplus', composites.SoftmaxZPlus),
                              ('cp_lrp', composites.Gradient)]:
    composite = composites.vit_groups(attention=attention)
    assert composite.names.count('softmax') == 1
    assert type(composite['softmax']) is expected, attention
  assert float(composites.vit_groups(attention='zplus_vbias')['softmax']
               .virtual_bias) == 1.0
  assert float(composites.vit_groups(attention='zplus')['softmax']
               .virtual_bias) == 0.0
  with pytest.raises(ValueError, match='unknown attention rule'):
    composites.vit_groups(attention='ZPlus_vbias_T')


def _vit():
  model = models.create('vit_tiny')
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  head = variables['params']['head']  # the head starts at zero
  head['kernel'] = jax.random.normal(jax.random.key(2), head['kernel'].shape)
  return model, variables, x


@pytest.mark.slow
def test_vit_attributes_with_every_attention_rule():
  model, variables, x = _vit()
  targets = jnp.array([3, 7])
  results, compiled = {}, {}
  for attention in composites.ATTENTION_RULES:
    results[attention] = pxp_jax.attribute(
        model, variables, x, targets,
        composites.vit_groups(attention=attention))
    compiled[attention] = attribution.compiled_programs()
  for attention, result in results.items():
    assert np.all(np.isfinite(result.input)), attention
    for key in ('patch_embed.proj', 'blocks.0.mlp.fc1', 'blocks.0.attn',
                'blocks.1.attn', 'blocks.1.mlp.fc1'):
      assert np.all(np.isfinite(result.units[key])), (attention, key)
  # zplus_vbias -> zplus changes a leaf only: no new program.
  assert compiled['zplus'] == compiled['zplus_vbias']
  reference = results['attn_lrp']
  for attention in ('zplus_vbias', 'zplus'):
    ours = results[attention]
    # Above the last softmax nothing changes ...
    for key in ('blocks.1.attn', 'blocks.1.mlp.fc1'):
      # float32 rounding of two programs; the ViT (GELU, softmax, no
      # pooling or ReLU) has no tie or switch that rounding could flip
      np.testing.assert_allclose(ours.units[key], reference.units[key],
                                 rtol=1e-5, atol=1e-7)
    # ... below it the relevance differs.
    for key in ('patch_embed.proj', 'blocks.0.mlp.fc1', 'blocks.0.attn'):
      assert not np.allclose(ours.units[key], reference.units[key],
                             rtol=1e-3), (attention, key)
    assert not np.allclose(ours.input, reference.input, rtol=1e-3)
  assert not np.allclose(results['zplus'].units['blocks.0.mlp.fc1'],
                         results['zplus_vbias'].units['blocks.0.mlp.fc1'],
                         rtol=1e-3)
