"""Pruning configs: ``--config=prune:model=NAME``.

NAME is a checkpoint (``resnet_digits``, ``vit_digits``, or a checkpoint
folder); append ``,runlocal`` for a quick run (3 samples per class, 5 rates).
Every field can be overridden on the command line, e.g.
``--config.units=heads --config.composite=epsilon_gamma_box``.
"""

import ml_collections

from pxp_jax.experiments.configs.options import (faithfulness_fields, parse,
                                         pruning_fields, scale_fields)


def get_config(arg: str = 'model=resnet_digits') -> ml_collections.ConfigDict:
  options = parse(arg, model='resnet_digits', runlocal=False)
  config = ml_collections.ConfigDict(dict(
      **pruning_fields(options.model),
      eval_split='test',
      criteria=('lrp', 'random', 'weight', 'gradient', 'taylor',
                'integrated_gradients'),  # + gradient_logit, taylor_logit
      composite='',                # a preset name; '' = the default
      composite_json='',           # or a JSON file {"preset": ..., "args": ...}
      signed=False,                # lrp: signed relevance instead of |R|
      normalize=False,             # per-layer normalisation (the 2021 --norm)
      per_layer=False,             # rank per layer instead of globally
      keep_one=False,              # never empty a layer
      ig_steps=20,                 # integrated gradients: path points and
      ig_form='reference',         #   reference | conductance
      heatmaps=8,
      stability=0,                 # > 0: LRP heatmaps of this many eval
                                   # images, pruned by lrp at each rate vs
                                   # unpruned (stability.json, .png)
      **faithfulness_fields(),
      **scale_fields(),
      fine_tune_steps=0,           # > 0: fine-tune each pruned model, report
      fine_tune_rate=0.3,          #   the test accuracy it recovers at this rate
      fine_tune_lr=1e-3,
      fine_tune_batch=64,
      slim=(),                     # criteria whose pruned models are slimmed
                                   # (pxp_jax.prune.slim) at every rate: parameters,
                                   # FLOPs, latency vs dense in results.json
                                   # (size), size.png; e.g. ('lrp',); () = off
                                   # (each rate compiles a model)
      size_batch=32,               # images per timed forward pass
      size_repeats=10,             # timed passes per model (median)
      export_rate=0.0,             # > 0: save the slim lrp-pruned model at
                                   # this rate (one of rates) to
                                   # workdir/pruned_<rate>; 0 = off
  ))
  if options.runlocal:
    config.n_per_class = 3
    config.rates = (0.0, 0.2, 0.4, 0.6, 0.8)
    config.random_seeds = 2
    config.ig_steps = 4
    config.size_batch = 8
    config.size_repeats = 3
  return config
