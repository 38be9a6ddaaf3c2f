"""Layer-wise Relevance Propagation: rules, composites, canonisers and
``attribute``.

  rules.py, linear_rules.py, op_rules.py   every rule, registered once
  linear_vjp.py                            a Dense/Conv layer under its rule
  composite.py                             Select, Composite (rules by operation)
  composites.py                            named composites: zennit's, AttnLRP,
                                           CP-LRP, PXP groups (= pxp_jax.composites)
  canonize.py                              BatchNorm folding
  attribution.py                           attribute(): heatmaps, unit relevance
  faithfulness.py                          region perturbation, stability under pruning
"""

from pxp_jax.lrp.attribution import Attribution, attribute

__all__ = ['Attribution', 'attribute']
