"""Bad arguments to rules, composites, models and attribute() are clear errors
on construction, before anything compiles; valid edge values still pass."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pxp_jax
from pxp_jax import checkpoints, composites, models, rules
from pxp_jax.lrp.composite import Select

NAN, INF = float('nan'), float('inf')

BAD_RULES = [
    # (what, build, match)
    ('negative eps', lambda: rules.epsilon(-1e-3),
     r'eps must be >= 0, got -0\.001'),
    ('NaN eps', lambda: rules.zplus(NAN), 'eps must be finite'),
    ('infinite eps', lambda: rules.flat(INF), 'eps must be finite'),
    ('string eps', lambda: rules.epsilon('1e-6'), 'eps must be a number'),
    ('vector eps', lambda: rules.epsilon(np.ones(3)), 'eps must be one number'),
    ('negative gamma', lambda: rules.gamma(-0.5), 'gamma must be >= 0'),
    ('NaN gamma', lambda: rules.gamma(NAN), 'gamma must be finite'),
    ('alpha - beta != 1', lambda: rules.linear_rule('alpha_beta', alpha=3.0,
                                                    beta=1.0),
     'alpha - beta must be 1'),
    ('negative beta', lambda: rules.alpha_beta(-1.0, -2.0),
     'beta must be >= 0'),
    ('zbox low > high', lambda: rules.zbox(1.0, 0.0), 'low < high'),
    ('zbox low == high', lambda: rules.zbox(0.0, 0.0), 'low < high'),
    ('zbox per-channel low > high',
     lambda: rules.zbox([0., 2., 0.], [1., 1., 1.]), 'low < high'),
    ('zbox bounds of two lengths', lambda: rules.zbox([0., 0., 0.], [1., 1.]),
     r'shapes \(3,\) and \(2,\)'),
    ('zbox 2-d bounds', lambda: rules.zbox(np.zeros((2, 3)), np.ones((2, 3))),
     'one value per input channel'),
    ('rule id out of range', lambda: rules.linear_rule(99), r'id in \[0, 7\)'),
    ('unknown rule name', lambda: rules.linear_rule('epsilon_plus'),
     'unknown linear-layer rule.*epsilon'),
    ('zero_bias a string', lambda: rules.epsilon(1e-6, 'yes'),
     'zero_bias must be True or False'),
    ('Norm negative eps', lambda: rules.Norm(-1.0), 'Norm: eps must be >= 0'),
    ('Identity NaN eps', lambda: rules.Identity(NAN),
     'Identity: eps must be finite'),
    ('LayerNormIdentity string eps', lambda: rules.LayerNormIdentity('x'),
     'must be a number'),
    ('SoftmaxZPlus virtual_bias 5', lambda: rules.SoftmaxZPlus(5.0),
     r'virtual_bias must be in \[0, 1\]'),
    ('JSON not an object', lambda: rules.from_json('epsilon'),
     'a rule in JSON is'),
    ('JSON unknown rule', lambda: rules.from_json({'rule': 'foo'}),
     "unknown rule 'foo'; rules: epsilon.*softmax_zplus"),
    ('JSON unknown hyperparameter', lambda: rules.from_json(
        {'rule': 'epsilon', 'epz': 1}), r"no hyperparameter\(s\) \['epz'\]"),
    ('JSON negative Norm eps',
     lambda: rules.from_json({'rule': 'norm', 'eps': -1}), 'eps must be >= 0'),
]


@pytest.mark.parametrize('build,match', [c[1:] for c in BAD_RULES],
                         ids=[c[0] for c in BAD_RULES])
def test_bad_rule_hyperparameters_fail_on_construction(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_valid_edge_values_are_accepted():
  rules.epsilon(0.0)  # LRP-0
  rules.gamma(0.0, eps=0.0)
  rules.alpha_beta(1.0, 0.0)
  rules.zbox([-1., -2., -3.], [1., 2., 3.])
  rules.zbox(np.float32(-1), jnp.asarray(1.0))
  rules.linear_rule(0, zero_bias=np.bool_(True))
  rules.SoftmaxZPlus(True)
  rules.from_json(rules.to_json(rules.alpha_beta(3.0, 2.0)))
  composites.epsilon_gamma_box(np.full(3, -1.0), np.full(3, 1.0))


def test_traced_hyperparameters_are_not_checked():
  """Inside jit the values are abstract: building rules and composites
  there (a search) is not refused."""

  @jax.jit
  def build(eps):
    composite = composites.epsilon_plus().with_rule('conv', rules.zplus(eps))
    return composite['conv'].eps

  assert float(build(0.5)) == 0.5


BAD_COMPOSITES = [
    ('negative stabiliser', lambda: composites.epsilon_plus(stabilizer=-1.0),
     ValueError, 'eps must be >= 0'),
    ('negative preset eps', lambda: composites.attn_lrp(eps=-0.01), ValueError,
     r'eps must be >= 0, got -0\.01'),
    ('negative preset gamma', lambda: composites.attn_lrp(gamma=-1.0),
     ValueError, 'gamma must be >= 0'),
    ('box low > high', lambda: composites.epsilon_gamma_box(1.0, -1.0),
     ValueError, 'low < high'),
    ('with_rule bad value', lambda: composites.epsilon_plus().with_rule(
        'conv', rules.epsilon(-1.0)),
     ValueError, 'eps must be >= 0'),
    ('with_rule not a rule', lambda: composites.epsilon_plus().with_rule(
        'conv', 'epsilon'), TypeError, "entry 'conv'.*not a rule"),
    ('Composite.of bad array rule', lambda: composites.Composite.of(
        [('all', Select(), rules.Norm(jnp.asarray(-1.0)))]), ValueError,
     "entry 'all': Norm: eps must be >= 0"),
    ('unknown preset', lambda: composites.get('foo'), ValueError,
     'unknown composite .*epsilon_plus'),
    ('unknown preset argument', lambda: composites.get('epsilon_plus', foo=1),
     TypeError, r"takes no argument\(s\) \['foo'\]; it takes \['eps'"),
    ('group rule not a linear rule', lambda: composites.pxp_groups(
        low=composites.Norm()), TypeError, "group 'low' takes a conv / dense"),
    ('unknown attention', lambda: composites.vit_groups(attention='foo'),
     ValueError, 'unknown attention rule'),
    ('boundaries reversed',
     lambda: composites.pxp_groups(boundaries=(0.8, 0.2)), ValueError,
     r'0 <= b1 <= b2 <= 1'),
    ('boundaries a number', lambda: composites.pxp_groups(boundaries=0.5),
     ValueError, 'boundaries must be None'),
    ('boundaries regex', lambda: composites.pxp_groups(
        boundaries={'low': '(', 'middle': 'a', 'high': 'b'}), ValueError,
     "Select path '\\(' is not a regular expression"),
    ('boundaries unknown group', lambda: composites.pxp_groups(
        boundaries={'low': 'a', 'middle': 'b', 'high': 'c', 'top': 'd'}),
     ValueError, r"unknown group\(s\) \['top'\]"),
    ('layer_groups bad boundaries', lambda: composites.layer_groups(
        models.create('resnet_tiny'), boundaries=(0.9, 0.1)), ValueError,
     r'0 <= b1 <= b2 <= 1'),
    ('JSON not an object', lambda: composites.from_json(['pxp_groups']),
     ValueError, 'a composite JSON is'),
    ('JSON args a list', lambda: composites.from_json(
        {'preset': 'pxp_groups', 'args': [1]}), ValueError, '"args" must be'),
    ('JSON string number', lambda: composites.from_json(
        {'preset': 'epsilon_plus', 'args': {'eps': '1e-6'}}), ValueError,
     'eps must be a number'),
    ('JSON rule name as string', lambda: composites.from_json(
        {'preset': 'pxp_groups', 'args': {'low': 'epsilon'}}), TypeError,
     "group 'low'"),
]


@pytest.mark.parametrize('build,error,match', [c[1:] for c in BAD_COMPOSITES],
                         ids=[c[0] for c in BAD_COMPOSITES])
def test_bad_composite_arguments_fail_on_construction(build, error, match):
  with pytest.raises(error, match=match):
    build()


BAD_MODELS = [
    ('vit_tiny', dict(depth=-1), r'ViT: depth must be an integer >= 1, got -1'),
    ('vit_tiny', dict(depth=0), 'depth must be an integer >= 1'),
    ('vit_tiny', dict(num_heads=3), 'width 32 is not divisible by num_heads 3'),
    ('vit_tiny', dict(num_heads=0), 'num_heads must be an integer >= 1'),
    ('vit_tiny', dict(patch_size=5), 'image_size 32 is not a multiple'),
    ('vit_tiny', dict(patch_size=0), 'patch_size must be an integer >= 1'),
    ('vit_tiny', dict(width=0), 'width must be an integer >= 1'),
    ('vit_tiny', dict(mlp_dim=-4), 'mlp_dim must be an integer >= 1'),
    ('vit_tiny', dict(num_classes=0), 'num_classes must be an integer >= 1'),
    ('vit_tiny', dict(num_classes='10'), 'num_classes must be an integer'),
    ('vit_tiny', dict(ln_eps=-1.0), 'ln_eps must be a finite number >= 0'),
    ('vit_tiny', dict(block_heads=(2,)), 'block_heads must be a tuple of 2'),
    ('vit_tiny', dict(block_mlp_dims=(8, -1)), r'block_mlp_dims\[1\]'),
    ('resnet_tiny', dict(stage_sizes=()), 'at least one stage'),
    ('resnet_tiny', dict(stage_sizes=(1, -1, 1, 1)),
     r'stage_sizes\[1\] must be an integer >= 1, got -1'),
    ('resnet_tiny', dict(width=0.0), 'width must be a finite number > 0'),
    ('resnet_tiny', dict(num_classes=0), 'num_classes must be an integer >= 1'),
    ('resnet_tiny', dict(block='basic'),
     'block must be BasicBlock or Bottleneck'),
    ('resnet_tiny', dict(widths=(('conv1', 0),)), r"widths\['conv1'\]"),
    ('vgg_tiny', dict(config=(8, 'X', 16)), "config entry must be an integer"),
    ('vgg_tiny', dict(config=(8, -4, 'M')), 'got -4'),
    ('vgg_tiny', dict(config=('M',)), 'at least one conv width'),
    ('vgg_tiny', dict(hidden=0), 'hidden must be an integer >= 1'),
    ('vgg_tiny', dict(hidden=(4, 4, 4)), 'hidden must be a tuple of 2'),
    ('vgg_tiny', dict(pool_size=(0, 2)), r'pool_size\[0\]'),
    ('vgg_tiny', dict(batch_norm='yes'), 'batch_norm must be True or False'),
]


@pytest.mark.parametrize('name,overrides,match', BAD_MODELS,
                         ids=[f'{n}-{o}' for n, o, _ in BAD_MODELS])
def test_bad_model_hyperparameters_fail_on_construction(name, overrides, match):
  overrides = dict(overrides)
  num_classes = overrides.pop('num_classes', 10)
  with pytest.raises(ValueError, match=match):
    models.create(name, num_classes, **overrides)


def test_unknown_model_names_the_known_ones():
  with pytest.raises(ValueError, match='unknown model .*vit_tiny'):
    models.create('vit_tinny')


def test_vgg_refuses_images_smaller_than_its_pools():
  model = models.create('vgg_tiny', 10)  # 3 max-pools: 8x8 at least
  with pytest.raises(ValueError, match='3 max-pools need images of at least '
                     r'8x8, got \(4, 4\)'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


@functools.cache
def _shipped(name):
  return checkpoints.load(name)


def _images(n=2, size=32):
  return jnp.asarray(np.random.RandomState(0).rand(n, size, size, 3),
                     jnp.float32)


def _attribute(**changes):
  model, variables = _shipped('resnet_digits')
  args = dict(model=model, variables=variables, inputs=_images(),
              targets=jnp.array([0, 1]), composite=composites.epsilon_plus())
  args.update(changes)
  return pxp_jax.attribute(args.pop('model'), args.pop('variables'),
                           args.pop('inputs'), args.pop('targets'),
                           args.pop('composite'), **args)


BAD_CALLS = [
    ('empty batch', dict(inputs=_images(0), targets=jnp.zeros(0, int)),
     ValueError, r'no images \(shape \(0, 32, 32, 3\)\)'),
    ('one image without batch axis', dict(inputs=_images()[0]), ValueError,
     r'NHWC images, got shape \(32, 32, 3\)'),
    ('NCHW', dict(inputs=_images().transpose(0, 3, 1, 2)), ValueError,
     'looks like NCHW'),
    ('uint8 images', dict(inputs=(_images() * 255).astype(jnp.uint8)),
     TypeError, 'float images, got uint8'),
    ('float targets', dict(targets=jnp.array([0., 1.])), TypeError,
     'integer class indices'),
    ('targets of another shape', dict(targets=jnp.array([[0], [1]])),
     ValueError, r'targets must have shape \(2,\)'),
    ('model a string', dict(model='resnet_digits'), TypeError,
     'model must be a flax.linen Module'),
    ('variables a list', dict(variables=[1, 2]), TypeError,
     'variables must be the model\'s variables dict'),
    ('params alone', dict(variables={'conv1': {}, 'fc': {}}), ValueError,
     'it looks like the params alone'),
    ('composite a string', dict(composite='epsilon_plus'), TypeError,
     'composite must be a pxp_jax.composites.Composite'),
    ('box bounds for 4 channels', dict(composite=composites.epsilon_gamma_box(
        np.zeros(4), np.ones(4))), ValueError,
     "entry 'first': low has 4 values but the inputs have 3 channels"),
    ('masks a list', dict(masks=[1]), TypeError, 'masks must map unit keys'),
    ('remat a string', dict(remat='yes'), TypeError, 'remat must be True or'),
    ('unknown init', dict(init='ones'), ValueError, 'unknown init'),
]


@pytest.mark.parametrize('changes,error,match', [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_attribute_arguments_fail_before_compiling(changes, error, match):
  with pytest.raises(error, match=match):
    _attribute(**changes)


def test_masks_of_the_wrong_length_name_the_unit_and_sizes():
  with pytest.raises(ValueError, match=r'conv1: \(3,\) \(expected \(16,\)\)'):
    _attribute(masks={'conv1': jnp.ones(3)})


def test_variables_of_another_model_are_listed_by_name():
  _, vit_variables = _shipped('vit_digits')
  with pytest.raises(ValueError, match='variables do not match the model '
                     'ResNet .*unexpected: .*params/blocks/0'):
    _attribute(variables=vit_variables)
  model, variables = _shipped('resnet_digits')
  with pytest.raises(ValueError, match=r'missing: batch_stats/bn1/mean'):
    _attribute(variables={'params': variables['params']})
  narrower = model.clone(width=0.125)  # same names, half the channels
  with pytest.raises(ValueError, match=r'wrong shape: batch_stats/bn1/mean '
                     r'\(16,\) \(expected \(8,\)\)'):
    _attribute(model=narrower)


class _Small(nn.Module):
  """A plain flax classifier: the smallest relevance program to compile."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def test_nan_inputs_are_named_not_blamed_on_eps():
  model = _Small()
  x = _images().at[1, 3, 3, 0].set(jnp.nan)
  variables = model.init(jax.random.key(0), _images())
  with pytest.raises(ValueError, match=r'inputs hold NaN .*images \[1\]'):
    _attribute(model=model, variables=variables, inputs=x)
