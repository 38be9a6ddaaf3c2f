"""attribute(): conservation, compile-once hyperparameters, clear errors."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pxp_jax
from pxp_jax import composites, models, rules
from pxp_jax.models import structure
from pxp_jax.lrp import attribution
from pxp_jax.models.kinds import Kind


def _model(name, dtype=jnp.float32, seed=0):
  model = models.create(name)
  x = jax.random.normal(jax.random.key(seed + 1), (2, 32, 32, 3), dtype)
  variables = model.init(jax.random.key(seed), x)
  if 'vit' in name:  # the head starts at zero: give it weights
    head = variables['params']['head']
    head['kernel'] = jax.random.normal(jax.random.key(seed + 2),
                                       head['kernel'].shape)
  variables = jax.tree.map(lambda a: a.astype(dtype), variables)
  return model, variables, x


def _zero(variables, leaf_names):
  flat = flax.traverse_util.flatten_dict(variables)
  return flax.traverse_util.unflatten_dict(
      {k: (jnp.zeros_like(v) if k[-1] in leaf_names else v)
       for k, v in flat.items()})


def _epsilon_everywhere(eps):
  rule = rules.epsilon(eps, zero_bias=True)
  return composites.pxp_groups(rule, rule, rule, rule, stabilizer=eps)


@pytest.fixture(autouse=True)
def _float64(x64):
  """x64 on: tests that compare two programs give float64 inputs, so that
  no float32 rounding difference between programs flips a stabiliser's sign
  (``z + eps * sign(z)`` at z ~ 0) and moves relevance."""
  del x64


@pytest.mark.parametrize('name', ['resnet_tiny', 'vgg_tiny'])
@pytest.mark.slow
def test_cnn_conserves_relevance_end_to_end(name):
  model, variables, x = _model(name, jnp.float64)
  result = pxp_jax.attribute(model, variables, x, jnp.array([3, 7]),
                             _epsilon_everywhere(1e-12))
  totals = attribution.conservation(result)
  # float64; eps = 1e-12 against denominators ~1e-3 and up absorbs < 1e-8
  np.testing.assert_allclose(totals['input'], 1.0, rtol=1e-6)
  if name == 'vgg_tiny':  # a chain: every layer holds all the relevance
    for path in structure.trace(model, variables, x.shape).units():
      np.testing.assert_allclose(totals[path], 1.0, rtol=1e-6, err_msg=path)
  else:  # per block: the two branches of a residual sum share it
    for block in ('layer2.0', 'layer3.0', 'layer4.0'):
      np.testing.assert_array_less(0, np.abs(totals[f'{block}.conv2']))


@pytest.mark.slow
def test_vit_conserves_relevance_with_cp_lrp():
  """CP-LRP is conservative once biases, class token and position embeddings
  (which absorb relevance) are zero; AttnLRP's softmax rule is not."""
  model, variables, x = _model('vit_tiny', jnp.float64)
  variables = _zero(variables, {'bias', 'cls_token', 'pos_embed'})
  result = pxp_jax.attribute(model, variables, x, jnp.array([3, 7]),
                             composites.cp_lrp(eps=1e-12))
  totals = attribution.conservation(result)
  # float64; the eps = 1e-12 of ~20 layers, and rounding, at the input
  np.testing.assert_allclose(totals['input'], 1.0, rtol=1e-8)
  # the head alone: one float64 division
  np.testing.assert_allclose(totals['head'], 1.0, rtol=1e-12)


@pytest.mark.parametrize('attention', ['attn_lrp', 'cp_lrp'])
@pytest.mark.slow
def test_vit_groups_cover_blocks_in_order_and_default_to_attn_and_cp_lrp(
    attention):
  model, variables, x = _model('vit_tiny', jnp.float64)
  grouped = composites.vit_groups(attention=attention)
  found = structure.trace(model, variables, x.shape)
  groups = {path: grouped.names[entry]
            for path, entry in grouped.plan(found,
                                            models.spec_for(model)).items()
            if grouped.names[entry] in ('low', 'middle', 'high', 'fc')}
  depth = model.depth
  quarter = max(1, depth // 4)  # the reference's: ViT-B/16 blocks 0-2/3-8/9-11
  for path, group in groups.items():
    if path == 'head':
      assert group == 'fc'
    elif path.startswith('patch_embed'):
      assert group == 'low'
    else:
      block = int(path.split('.')[1])
      assert group == ('low' if block < quarter else 'high'
                       if block >= depth - quarter else 'middle'), path
  cut = composites.layer_groups(model, found, boundaries=(0.5, 0.75))
  assert all(int(p.split('.')[1]) < depth / 2 for p in cut['low'][1:])
  assert {int(p.split('.')[1]) for p in cut['high']} == {
      b for b in range(depth) if b >= 0.75 * depth}
  # With Epsilon in every group it is the published composite.
  published = getattr(composites, attention)()
  ours = pxp_jax.attribute(model, variables, x, jnp.array([1, 2]), grouped)
  reference = pxp_jax.attribute(model, variables, x, jnp.array([1, 2]),
                                published)
  np.testing.assert_array_equal(ours.input, reference.input)


@pytest.mark.parametrize('name', ['resnet_tiny', 'vit_tiny'])
@pytest.mark.slow
def test_units_alone_equal_the_full_attribution(name):
  model, variables, x = _model(name, jnp.float64)
  composite = composites.for_model(model)
  full = pxp_jax.attribute(model, variables, x, jnp.array([3, 7]), composite)
  units = pxp_jax.attribute(model, variables, x, jnp.array([3, 7]),
                            composite, input_relevance=False)
  assert units.input is None
  for key, value in full.units.items():
    np.testing.assert_array_equal(units.units[key], value, err_msg=key)


@pytest.mark.slow
def test_units_cover_filters_neurons_and_heads():
  model, variables, x = _model('vit_tiny')
  result = pxp_jax.attribute(model, variables, x, jnp.array([0, 1]),
                             composites.attn_lrp())
  assert result.units['blocks.1.attn'].shape == (2, 2)  # heads
  assert result.units['blocks.1.mlp.fc1'].shape == (2, 64)
  assert result.units['patch_embed.proj'].shape == (2, 32)
  absolute = pxp_jax.attribute(model, variables, x, jnp.array([0, 1]),
                               composites.attn_lrp(), absolute_tokens=True)
  signed, summed_abs = (result.units['blocks.1.mlp.fc1'],
                        absolute.units['blocks.1.mlp.fc1'])
  # |sum| <= sum |.| up to float32 rounding (these relevances are below 1)
  assert np.all(summed_abs >= np.abs(signed) - 1e-6)
  model, variables, x = _model('resnet_tiny')
  result = pxp_jax.attribute(model, variables, x, jnp.array([0, 1]),
                             composites.epsilon_plus())
  assert result.units['layer2.0.downsample.0'].shape == (2, 16)
  assert result.input.shape == x.shape


def _count_traces(monkeypatch):
  traces = []
  original = structure.trace
  monkeypatch.setattr(structure, 'trace',
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  return traces


@pytest.mark.slow
def test_rule_choice_and_hyperparameters_do_not_recompile(monkeypatch):
  traces = _count_traces(monkeypatch)
  model, variables, x = _model('resnet_tiny', jnp.float64)
  targets = jnp.array([0, 1])
  base = composites.pxp_groups()
  variants = [
      base,
      base.with_rule('low', rules.gamma(0.5)),
      base.with_rule('low', rules.gamma(2.0, eps=1e-3)),
      base.with_rule('middle', rules.alpha_beta(3.0, 2.0)),
      base.with_rule('high', rules.epsilon(0.1, zero_bias=True)),
      base.with_rule('fc', rules.zplus()),
      base.with_rule('sum', composites.Norm(1e-3)),
  ]
  outputs = [pxp_jax.attribute(model, variables, x, targets, c,
                               dynamic_rules=True).input for c in variants]
  assert len(traces) == 1  # one trace for all seven variants
  for a, b in zip(outputs, outputs[1:]):  # and they really differ
    assert not np.allclose(a, b)
  # The default, fixed-rule programs give the same relevance.
  for composite, dynamic in zip(variants, outputs):
    fixed = pxp_jax.attribute(model, variables, x, targets, composite).input
    # float64 rounding of two programs of the same formulas
    np.testing.assert_allclose(fixed, dynamic, rtol=1e-9,
                               atol=1e-12 * np.abs(dynamic).max())


@pytest.mark.slow
def test_fixed_rules_recompile_only_for_a_new_rule(monkeypatch):
  traces = _count_traces(monkeypatch)
  model, variables, x = _model('resnet_tiny')
  targets = jnp.array([0, 1])
  base = composites.epsilon_gamma_box(-3.0, 3.0)
  for composite in [base,
                    base.with_rule('conv', rules.gamma(1.0, eps=1e-4)),
                    base.with_rule('first', rules.zbox(-2.0, 2.5)),
                    base.with_rule('dense', rules.epsilon(0.2, True))]:
    pxp_jax.attribute(model, variables, x, targets, composite)
  assert len(traces) == 1
  pxp_jax.attribute(model, variables, x, targets,
                    base.with_rule('conv', rules.zplus()))
  assert len(traces) == 2


def test_bad_inputs_are_clear_errors():
  model, variables, x = _model('resnet_tiny')
  comp = composites.epsilon_plus()
  with pytest.raises(ValueError, match='NHWC'):
    pxp_jax.attribute(model, variables, x[0], jnp.array([0]), comp)
  with pytest.raises(TypeError, match='float'):
    pxp_jax.attribute(model, variables, x.astype(jnp.int32),
                      jnp.array([0, 1]), comp)
  with pytest.raises(ValueError, match='one class per input'):
    pxp_jax.attribute(model, variables, x, jnp.array([0]), comp)
  with pytest.raises(ValueError, match=r'\[0, 1000\)'):
    pxp_jax.attribute(model, variables, x, jnp.array([0, 1000]), comp)
  with pytest.raises(ValueError, match='unknown init'):
    pxp_jax.attribute(model, variables, x, jnp.array([0, 1]), comp,
                      init='ones')
  with pytest.raises(ValueError, match='unknown composite'):
    composites.get('epsilon_plus_plus')
  partial = composites.Composite.of([
      ('conv', composites.Select((Kind.CONV,)), rules.zplus())])
  with pytest.raises(ValueError, match=r'no rule .*layer1\.0\.residual \(sum\)'
                     r'.*fc \(dense\)'):
    pxp_jax.attribute(model, variables, x, jnp.array([0, 1]), partial)


def test_fold_needs_the_batch_norm_canonizer_and_groups_follow_the_spec():
  model, variables, x = _model('resnet_tiny')
  preset = composites.epsilon_plus()
  assert any(isinstance(c, composites.MergeBatchNorm)
             for c in preset.canonizers)
  unfolded = composites.Composite.of(
      list(zip(preset.names, preset.selects, preset.rules)))
  with pytest.raises(ValueError, match=r'BatchNorm bn1 takes the Fold rule '
                     'but no canoniser of the composite folds it'):
    pxp_jax.attribute(model, variables, x, jnp.array([0, 1]), unfolded)
  # The layer groups of pxp_groups are the family spec's.
  grouped = composites.pxp_groups()
  found = structure.trace(model, variables, x.shape)
  plan = grouped.plan(found, models.spec_for(model))
  planned = {g: sorted(p for p, e in plan.items() if grouped.names[e] == g)
             for g in composites.GROUPS}
  assert planned == {g: sorted(paths) for g, paths in
                     composites.layer_groups(model, found).items()}
  assert planned['fc'] == ['fc'] and 'conv1' in planned['low']

@pytest.mark.slow
def test_zero_target_logit_is_reported():
  model = models.create('vit_tiny')  # a zero-initialised head: zero logits
  x = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(FloatingPointError, match='target logit is exactly 0'):
    pxp_jax.attribute(model, variables, x, jnp.array([0]),
                      composites.attn_lrp())


def test_zero_denominator_is_reported():
  model, variables, x = _model('vgg_tiny')
  with pytest.raises(FloatingPointError, match='NaN or infinite'):
    pxp_jax.attribute(model, variables, jnp.zeros_like(x),
                      jnp.array([0, 1]), _epsilon_everywhere(0.0))


@pytest.mark.slow
def test_attribute_runs_under_jit_and_vmap():
  model, variables, x = _model('resnet_tiny', jnp.float64)
  comp = composites.epsilon_plus()
  direct = pxp_jax.attribute(model, variables, x, jnp.array([0, 1]), comp)
  jitted = jax.jit(lambda v, a, t, c: pxp_jax.attribute(model, v, a, t, c))(
      variables, x, jnp.array([0, 1]), comp)
  scale = float(np.abs(direct.input).max())
  # float64 rounding of differently compiled (and batched) convolutions
  np.testing.assert_allclose(jitted.input, direct.input, rtol=1e-9,
                             atol=1e-12 * scale)
  per_sample = jax.vmap(
      lambda a, t: pxp_jax.attribute(model, variables, a[None], t[None],
                                     comp).input[0])(x, jnp.array([0, 1]))
  np.testing.assert_allclose(per_sample, direct.input, rtol=1e-9,
                             atol=1e-12 * scale)


_SHARDED = r'''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import pxp_jax
from pxp_jax import composites, models
assert len(jax.devices()) == 4
# float64: per-device batches of 2 may round their convolutions differently
# from one batch of 8, and in float32 that can flip a stabiliser's sign
jax.config.update('jax_enable_x64', True)
model = models.create('resnet_tiny')
x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3), jnp.float64)
variables = jax.tree.map(lambda a: a.astype(jnp.float64),
                         model.init(jax.random.key(0), x))
targets = jnp.arange(8) % 10
comp = composites.epsilon_plus()
plain = pxp_jax.attribute(model, variables, x, targets, comp)
mesh = Mesh(np.array(jax.devices()), ('batch',))
put = lambda a: jax.device_put(a, NamedSharding(mesh, P('batch')))
sharded = pxp_jax.attribute(model, variables, put(x), put(targets), comp)
assert len(sharded.input.sharding.device_set) == 4
# float64 rounding of the same formulas on other batch sizes
np.testing.assert_allclose(sharded.input, plain.input, rtol=1e-9,
                           atol=1e-12 * float(jnp.abs(plain.input).max()))
for k in plain.units:
  np.testing.assert_allclose(sharded.units[k], plain.units[k], rtol=1e-9,
                             atol=1e-12 * float(jnp.abs(plain.units[k]).max()))
print('sharded ok')
'''


@pytest.mark.slow
def test_attribute_runs_sharded_over_the_batch():
  """Data-parallel: inputs sharded over 4 (host) devices give the same
  relevance, and the result stays sharded."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _SHARDED], env=env, text=True,
                       capture_output=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'sharded ok' in out.stdout
