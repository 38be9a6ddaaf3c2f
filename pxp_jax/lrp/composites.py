"""Composites by name: zennit's presets, AttnLRP and CP-LRP, PXP's groups.

This module is ``pxp_jax.composites``; it also names the building blocks
(``Composite``, ``Select``, ``Kind``, the rules of parameter-free
operations) so that a custom composite needs one import.
"""

from __future__ import annotations

import inspect

import numpy as np

from pxp_jax.models import structure
from pxp_jax.lrp import rules
from pxp_jax.lrp.canonize import MergeBatchNorm
from pxp_jax.lrp.composite import GROUPS, Composite, Select
from pxp_jax.lrp.rules import (Fold, Gradient, HalfMatMul, Identity,
                               LayerNormIdentity, Norm, SoftmaxZPlus,
                               StopRelevance)
from pxp_jax.models import spec as spec_lib
from pxp_jax.models.kinds import Kind

LINEAR = (Kind.CONV, Kind.DENSE)


def _cnn_base(stabilizer):
  """zennit's shared base: BatchNorm folded, activations, max-pooling and
  reshapes pass (gradient), sums and average pooling Norm."""
  return [
      ('batch_norm', Select((Kind.BATCH_NORM,)), Fold()),
      ('activation', Select((Kind.RELU,)), Gradient()),
      ('max_pool', Select((Kind.MAX_POOL,)), Gradient()),
      ('flatten', Select((Kind.RESHAPE,)), Gradient()),
      ('sum', Select((Kind.SUM,)), Norm(stabilizer)),
      ('avg_pool', Select((Kind.AVG_POOL,)), Norm(stabilizer)),
  ]


def _cnn(entries) -> Composite:
  return Composite.of(entries, canonizers=(MergeBatchNorm(),))


def _conv_dense(conv_rule, eps, stabilizer, first=None, zero_bias=False):
  entries = _cnn_base(stabilizer)
  if first is not None:
    entries.append(('first', Select((Kind.CONV,), first=True), first))
  entries += [('conv', Select((Kind.CONV,)), conv_rule),
              ('dense', Select((Kind.DENSE,)), rules.epsilon(eps, zero_bias))]
  return _cnn(entries)


def epsilon_plus(eps=1e-6, stabilizer=1e-6, zero_bias=False) -> Composite:
  """zennit's EpsilonPlus: ZPlus on convs, Epsilon on dense layers."""
  return _conv_dense(rules.zplus(stabilizer, zero_bias), eps, stabilizer,
                     zero_bias=zero_bias)


def epsilon_plus_flat(eps=1e-6, stabilizer=1e-6, zero_bias=False) -> Composite:
  """zennit's EpsilonPlusFlat: EpsilonPlus with Flat on the first conv."""
  return _conv_dense(rules.zplus(stabilizer, zero_bias), eps, stabilizer,
                     first=rules.flat(stabilizer), zero_bias=zero_bias)


def epsilon_alpha2_beta1(eps=1e-6, stabilizer=1e-6,
                         zero_bias=False) -> Composite:
  """zennit's EpsilonAlpha2Beta1: AlphaBeta(2, 1) on convs, Epsilon on dense."""
  return _conv_dense(rules.alpha_beta(2.0, 1.0, stabilizer, zero_bias), eps,
                     stabilizer, zero_bias=zero_bias)


def epsilon_alpha2_beta1_flat(eps=1e-6, stabilizer=1e-6,
                              zero_bias=False) -> Composite:
  """zennit's EpsilonAlpha2Beta1Flat: the above with Flat on the first conv."""
  return _conv_dense(rules.alpha_beta(2.0, 1.0, stabilizer, zero_bias), eps,
                     stabilizer, first=rules.flat(stabilizer),
                     zero_bias=zero_bias)


def epsilon_gamma_box(low, high, gamma=0.25, eps=1e-6, stabilizer=1e-6,
                      zero_bias=False) -> Composite:
  """zennit's EpsilonGammaBox: ZBox(low, high) on the first conv, Gamma on
  the other convs, Epsilon on dense layers. ``low``/``high`` are the bounds
  of the (normalised) input, scalars or per channel."""
  return _conv_dense(rules.gamma(gamma, stabilizer, zero_bias), eps,
                     stabilizer, first=rules.zbox(low, high, stabilizer),
                     zero_bias=zero_bias)


def _transformer(linear, eps, attention):
  """A transformer composite: ``linear`` the entries of the conv and dense
  layers, ``attention`` the name of the rules of the softmax and the two
  attention products (``ATTENTION_RULES``)."""
  if not isinstance(attention, str) or attention not in _ATTENTION:
    raise ValueError(f'unknown attention rule {attention!r}; choose among '
                     f'{ATTENTION_RULES}')
  return Composite.of([
      ('layer_norm', Select((Kind.LAYER_NORM,)), LayerNormIdentity(eps)),
      ('activation', Select((Kind.GELU,)), Identity(eps)),
      ('relu', Select((Kind.RELU,)), Gradient()),
      *_ATTENTION[attention](eps),
      ('sum', Select((Kind.SUM,)), Norm(eps)),
      ('pool', Select((Kind.AVG_POOL,)), Norm(eps)),
      *linear,
  ])


def _uniform_attention(softmax_rule, eps):
  """``softmax_rule`` on the softmax, AttnLRP's uniform rule on Q K^T and
  A V."""
  return [('softmax', Select((Kind.SOFTMAX,)), softmax_rule),
          ('matmul', Select((Kind.QUERY_KEY, Kind.ATTENTION_VALUE)),
           HalfMatMul(eps))]


# The attention options of the PXP reference (Hatefi et al., 2024): the
# rules of the softmax and of the two attention products. The two z+
# options have the same entries and rule types (only the virtual-bias leaf
# differs), so switching between them compiles nothing new.
_ATTENTION = {
    # AttnLRP: softmax by its gradient (x input), the uniform (50/50) rule
    # on Q K^T and A V (the reference's "Epsilon").
    'attn_lrp': lambda eps: _uniform_attention(Gradient(), eps),
    # z+ on the softmax's expansion around 0, the remainder kept as a bias
    # in the denominator (the reference's "ZPlus_vbias_T").
    'zplus_vbias': lambda eps: _uniform_attention(SoftmaxZPlus(1.0, eps), eps),
    # The same without the bias (the reference's "ZPlus_vbias_F").
    'zplus': lambda eps: _uniform_attention(SoftmaxZPlus(0.0, eps), eps),
    # CP-LRP: no relevance through the attention weights, only through V
    # (the reference's "CP").
    'cp_lrp': lambda eps: [
        ('softmax', Select((Kind.SOFTMAX,)), Gradient()),
        ('attention_scores', Select((Kind.QUERY_KEY,)), StopRelevance()),
        ('attention_values', Select((Kind.ATTENTION_VALUE,)), Gradient()),
    ],
}
ATTENTION_RULES = tuple(_ATTENTION)


def _vit_linear(eps, gamma):
  rule = rules.epsilon(eps) if gamma is None else rules.gamma(gamma, eps)
  return [('linear', Select(LINEAR), rule)]


def attn_lrp(eps=1e-6, gamma=None) -> Composite:
  """AttnLRP for transformers (Achtibat et al., 2024): Epsilon (or
  Gamma(gamma)) on dense layers and the patch embedding, the identity rule
  on LayerNorm's normalisation and GELU, softmax by its gradient, the
  uniform rule on the two attention products, Norm on the residual sums.
  ``vit_groups(attention=...)`` offers the PXP reference's other softmax
  rules (``'zplus_vbias'``, ``'zplus'``: ``SoftmaxZPlus``)."""
  return _transformer(_vit_linear(eps, gamma), eps, 'attn_lrp')


def cp_lrp(eps=1e-6, gamma=None) -> Composite:
  """CP-LRP (Ali et al., 2022) as in LXT: AttnLRP's rules, but no relevance
  through the attention weights (Q K^T stops it, so the softmax's rule does
  not matter); it flows through the values only."""
  return _transformer(_vit_linear(eps, gamma), eps, 'cp_lrp')


def _group_rules(defaults, chosen) -> dict:
  for group, rule in chosen.items():
    if rule is not None and not isinstance(rule, rules.LinearRule):
      raise TypeError(f'group {group!r} takes a conv / dense layer rule '
                      f'(rules.{", rules.".join(rules.names())}), got '
                      f'{rule!r}')
  return {g: defaults[g] if chosen.get(g) is None else chosen[g]
          for g in GROUPS}


def _boundaries(boundaries):
  """None (the family's stages) or a ``(b1, b2)`` tuple; JSON files hold a
  list, or an empty one for the stages."""
  if boundaries is not None and not isinstance(boundaries, (tuple, list)):
    raise ValueError(f'boundaries must be None (by stage) or (b1, b2), '
                     f'fractions where the middle and high groups start, got '
                     f'{boundaries!r}')
  if boundaries and (
      len(boundaries) != 2
      or any(isinstance(b, (bool, str))
             or not isinstance(b, (int, float, np.number)) for b in boundaries)
      or not 0 <= boundaries[0] <= boundaries[1] <= 1):
    raise ValueError(f'boundaries must be None (by stage) or (b1, b2) with '
                     f'0 <= b1 <= b2 <= 1, got {boundaries!r}')
  return tuple(boundaries) if boundaries else None


def vit_groups(low=None, middle=None, high=None, fc=None, *,
               attention: str = 'attn_lrp',
               boundaries: tuple[float, float] | None = None,
               stabilizer=1e-6, depth: int | None = None) -> Composite:
  """PXP's layer groups for a transformer (Hatefi et al., 2024), each with
  its own rule (Epsilon by default, as AttnLRP); the family spec says which
  layers each group holds (for a ViT by default the reference's: the first
  quarter of the blocks low, with the patch embedding, the last quarter
  high; with ``boundaries`` blocks ``i`` with ``b1 <= i / depth < b2`` are
  middle; the head is ``fc``). ``attention`` (``ATTENTION_RULES``) chooses
  the rules of the softmax and the attention products, the PXP reference's
  four options: ``'attn_lrp'`` (softmax by its gradient, the uniform rule
  on Q K^T and A V), ``'zplus_vbias'`` and ``'zplus'`` (``SoftmaxZPlus``
  with and without the virtual bias, the uniform rule on both products) and
  ``'cp_lrp'`` (no relevance through Q K^T, the gradient through A V). The
  other rules are AttnLRP's, with ``stabilizer`` their eps (the softmax
  rule's too). ``depth`` is read from the model (accepted for older JSON
  files)."""
  del depth
  chosen = _group_rules({g: rules.epsilon() for g in GROUPS},
                        dict(low=low, middle=middle, high=high, fc=fc))
  linear = [(g, Select(LINEAR, group=g, boundaries=_boundaries(boundaries)),
             chosen[g]) for g in ('fc', 'low', 'middle', 'high')]
  return _transformer(linear, stabilizer, attention)


def pxp_groups(low=None, middle=None, high=None, fc=None, *,
               boundaries: tuple[float, float] | dict[str, str] | None = None,
               stabilizer=1e-6) -> Composite:
  """The layer-group composite of PXP (Hatefi et al., 2024) for CNNs.

  The family spec splits the convs into low, middle and high groups (by
  stage, as the reference: ResNet-18 5/10/5, VGG-16 4/5/4), each with its
  own rule; dense layers form the ``fc`` group. The defaults are the 2021
  paper's composite (Yeom et al.): ZPlus without bias on the convs and the
  dense layers.

  Args:
    low, middle, high, fc: ``rules.LinearRule`` of each group.
    boundaries: None for the family's stages, fractions ``(b1, b2)`` where
      middle and high start in the convs' call order, or ``{'low': regex,
      'middle': regex, 'high': regex}`` over conv paths.
    stabilizer: eps of the Norm rule on sums and average pooling.
  """
  zplus = rules.zplus(zero_bias=True)
  chosen = _group_rules(dict(low=zplus, middle=zplus, high=zplus, fc=zplus),
                        dict(low=low, middle=middle, high=high, fc=fc))
  if isinstance(boundaries, dict):
    missing = set(GROUPS[:3]) - set(boundaries)
    if missing:
      raise ValueError(f'boundaries lacks group(s) {sorted(missing)}')
    unknown = set(boundaries) - set(GROUPS[:3])
    if unknown:
      raise ValueError(f'boundaries has unknown group(s) {sorted(unknown)}; '
                       f'the conv groups are {GROUPS[:3]}')
    selects = {g: Select((Kind.CONV,), path=boundaries[g]) for g in GROUPS[:3]}
    selects['fc'] = Select((Kind.DENSE,))
  else:
    selects = {g: Select(LINEAR, group=g, boundaries=_boundaries(boundaries))
               for g in GROUPS}
  return _cnn([*_cnn_base(stabilizer),
               *[(g, selects[g], chosen[g]) for g in GROUPS]])


PRESETS = {
    'epsilon_plus': epsilon_plus,
    'epsilon_plus_flat': epsilon_plus_flat,
    'epsilon_alpha2_beta1': epsilon_alpha2_beta1,
    'epsilon_alpha2_beta1_flat': epsilon_alpha2_beta1_flat,
    'epsilon_gamma_box': epsilon_gamma_box,
    'attn_lrp': attn_lrp,
    'cp_lrp': cp_lrp,
    'pxp_groups': pxp_groups,
    'vit_groups': vit_groups,
}
BOUNDED = ('epsilon_gamma_box',)  # presets that take the input bounds


def get(name: str, **kwargs) -> Composite:
  """A preset by name with its keyword arguments."""
  if name not in PRESETS:
    raise ValueError(f'unknown composite {name!r}; presets: '
                     f'{", ".join(sorted(PRESETS))}')
  takes = inspect.signature(PRESETS[name]).parameters
  unknown = sorted(set(kwargs) - set(takes))
  if unknown:
    raise TypeError(f'composite {name!r} takes no argument(s) {unknown}; it '
                    f'takes {list(takes)}')
  return PRESETS[name](**kwargs)


def for_model(model, low=None, high=None, *, found=None,
              purpose: str = 'heatmaps') -> Composite:
  """The family's default composite (``pxp_jax.models.spec``).

  Args:
    model: a flax model.
    low, high: the bounds of its normalised inputs, for presets that take
      them (EpsilonGammaBox); without them EpsilonPlus stands in.
    found: its structure (``structure.trace_model`` if not given).
    purpose: ``'heatmaps'`` (EpsilonGammaBox for CNNs, AttnLRP for
      transformers) or ``'pruning'`` (the 2021 groups, AttnLRP's groups).
  """
  spec = spec_lib.spec_for(model)
  if found is None:
    found = structure.trace_model(model)
  if purpose == 'pruning':
    return get(spec.pruning_composite(found))
  if purpose != 'heatmaps':
    raise ValueError(f"purpose must be 'heatmaps' or 'pruning', got "
                     f'{purpose!r}')
  name = spec.heatmap_composite(found)
  if name in BOUNDED:
    if low is None or high is None:
      return epsilon_plus()
    return get(name, low=low, high=high)
  return get(name)


def layer_groups(model, found=None, boundaries=None) -> dict[str, list[str]]:
  """``{'low': [...], 'middle': [...], 'high': [...], 'fc': [...]}``: the
  layer paths of each PXP layer group of ``model``, as its family spec
  splits them: by stage as the PXP reference (``boundaries=None``), or at
  fractions ``(b1, b2)`` of the layers in call order.

  Example::

    composites.layer_groups(models.create('resnet18'))['low']
    # ['conv1', 'layer1.0.conv1', 'layer1.0.conv2', 'layer1.1.conv1',
    #  'layer1.1.conv2']
  """
  found = found or structure.trace_model(model)
  return spec_lib.spec_for(model).layer_groups(found, _boundaries(boundaries))


def from_json(spec: dict) -> Composite:
  """A preset from ``{"preset": name, "args": {...}}``; arguments that are
  dicts with a ``"rule"`` key become rules (e.g. the groups of
  ``pxp_groups``)."""
  if not isinstance(spec, dict) or 'preset' not in spec:
    raise ValueError('a composite JSON is {"preset": name, "args": {...}} '
                     f'(presets: {", ".join(sorted(PRESETS))}), got {spec!r}')
  raw = spec.get('args', {})
  if not isinstance(raw, dict):
    raise ValueError(f'a composite JSON\'s "args" must be an object of '
                     f'keyword arguments of {spec["preset"]!r}, got {raw!r}')
  args = {k: rules.from_json(v) if isinstance(v, dict) and 'rule' in v else v
          for k, v in raw.items()}
  if 'boundaries' in args and not isinstance(args['boundaries'], dict):
    args['boundaries'] = _boundaries(args['boundaries'])
  return get(spec['preset'], **args)


__all__ = [
    'ATTENTION_RULES', 'BOUNDED', 'Composite', 'Fold', 'GROUPS', 'Gradient',
    'HalfMatMul', 'Identity', 'Kind', 'LayerNormIdentity', 'MergeBatchNorm',
    'Norm', 'PRESETS', 'Select', 'SoftmaxZPlus', 'StopRelevance',
    'attn_lrp', 'cp_lrp',
    'epsilon_alpha2_beta1', 'epsilon_alpha2_beta1_flat', 'epsilon_gamma_box',
    'epsilon_plus', 'epsilon_plus_flat', 'for_model', 'from_json', 'get',
    'layer_groups', 'pxp_groups', 'vit_groups',
]
