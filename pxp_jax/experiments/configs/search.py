"""Search configs: ``--config=search:model=NAME``.

NAME is a checkpoint (``resnet_digits``, ``vit_digits``, or a checkpoint
folder); append ``,runlocal`` for a quick run (3 samples per class, 5
rates). The search space is ``config.space``: narrow or widen it on the
command line, e.g. ``--config.space.rules='("gamma","epsilon")'``. A ViT
prunes MLP neurons by default (``--config.units=heads`` for heads) and also
searches the attention rule (``space.attention``).
"""

import ml_collections

from pxp_jax.experiments.configs.options import (faithfulness_fields, parse,
                                         pruning_fields, scale_fields)


def get_config(arg: str = 'model=resnet_digits') -> ml_collections.ConfigDict:
  options = parse(arg, model='resnet_digits', runlocal=False)
  config = ml_collections.ConfigDict(dict(
      **pruning_fields(options.model),
      validation_split='validation',   # where trials are scored
      objective='a_pr',                # a_pr (mean accuracy) | auc
      test_split='test',               # the final comparison
      cache_eval=True,                 # hold the evaluation splits in memory
                                       # (False streams them every trial)
      sampler='gp',                    # gp (Gaussian process) | tpe
      storage='',                      # where trials live: '' = SQLite in
                                       # the workdir (one worker); 'journal'
                                       # = workdir/study.journal (several
                                       # workers on one machine, no server);
                                       # 'journal:PATH' = a journal file on a
                                       # shared file system; or an
                                       # SQLAlchemy URL for workers on many
                                       # machines: postgresql://USER@HOST:
                                       # PORT/DB (pxp_jax[postgres]),
                                       # mysql+pymysql://..., sqlite:///PATH
      **faithfulness_fields(),
      **scale_fields(),
      space=dict(
          groups=('low', 'middle', 'high', 'fc'),
          rules=('epsilon', 'gamma', 'zplus', 'alpha_beta'),
          eps=(1e-9, 1.0),             # log scale
          gamma=(1e-3, 10.0),          # log scale
          signed=(False, True),        # rank by signed R or by |R|
          zero_bias=(False, True),     # biases take relevance or not
          boundaries=(),               # () = by stage (the reference's
                                       # groups); (b1, b2) = fractions where
                                       # middle and high convs (or ViT
                                       # blocks) start
          # ViTs: the attention rule (AttnLRP, the z+ softmax rule with and
          # without the virtual bias, CP-LRP), as the reference searches
          attention=('attn_lrp', 'zplus_vbias', 'zplus', 'cp_lrp'),
          n_per_class=(),              # e.g. (1, 3, 10): search it too
      ),
  ))
  if options.runlocal:
    config.n_per_class = 3
    config.rates = (0.0, 0.1, 0.2, 0.3, 0.4)
    config.random_seeds = 2
  return config
