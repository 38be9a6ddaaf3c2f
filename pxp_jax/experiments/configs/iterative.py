"""Iterative pruning configs:
``--config=iterative:model=NAME``.

NAME is a checkpoint (``resnet_digits``, ``vit_digits``, or a checkpoint
folder); append ``,runlocal`` for a quick run (3 samples per class, two
rounds of a few steps). Every field can be overridden on the command line,
e.g. ``--config.target_rate=0.5 --config.fine_tune_steps=200``.
"""

import ml_collections

from pxp_jax.experiments.configs.options import (parse, pruning_fields,
                                                 scale_fields)


def get_config(arg: str = 'model=resnet_digits') -> ml_collections.ConfigDict:
  options = parse(arg, model='resnet_digits', runlocal=False)
  fields = pruning_fields(options.model)
  # The rounds' rates come from target_rate and step; no random seeds or
  # repeated draws here.
  for name in ('rates', 'random_seeds', 'draws'):
    fields.pop(name)
  scale = scale_fields()
  scale.pop('tensorboard')
  config = ml_collections.ConfigDict(dict(
      **fields,
      **scale,
      eval_split='test',
      criteria=('lrp', 'weight'),  # lrp, weight (magnitude), gradient,
                                   # taylor, random
      composite='',                # a preset name; '' = the default
      composite_json='',           # or a JSON file {"preset": ..., "args": ...}
      signed=False,                # lrp: signed relevance instead of |R|
      per_layer=False,             # rank per layer instead of globally
      keep_one=False,              # never empty a layer
      target_rate=0.7,             # share of the units pruned at the end
      step=0.1,                    # share of the units pruned per round
      fine_tune_steps=100,         # AdamW steps per round (train split)
      fine_tune_lr=1e-3,
      fine_tune_batch=64,
      weight_decay=0.0,
      one_shot=True,               # also one-shot LRP at the same rates, no
                                   # fine-tuning (the comparison)
  ))
  if options.runlocal:
    config.n_per_class = 3
    config.target_rate = 0.2
    config.fine_tune_steps = 3
  return config
