"""Layer-wise Relevance Propagation: rules, composites, canonisers and
``attribute``.

  rules.py, linear_rules.py, op_rules.py   every rule, registered once
  linear_vjp.py                            a Dense/Conv layer under its rule
  composites.py                            Select, Composite (rules by operation)
  presets.py                               zennit's, AttnLRP, CP-LRP, PXP groups
  canonize.py                              BatchNorm folding
  attribution.py                           attribute(): heatmaps, unit relevance
"""

from pxp_jax.lrp.attribution import Attribution, attribute

__all__ = ['Attribution', 'attribute']
