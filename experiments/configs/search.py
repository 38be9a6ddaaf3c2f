"""Search configs: ``--config=experiments/configs/search.py:model=NAME``.

NAME is a checkpoint (``resnet_digits``, ``vit_digits``, or a checkpoint
folder); append ``,runlocal`` for a quick run (3 samples per class, 5
rates). The search space is ``config.space``: narrow or widen it on the
command line, e.g. ``--config.space.rules='("gamma","epsilon")'``. A ViT
prunes MLP neurons by default (``--config.units=heads`` for heads) and also
searches the attention rule (``space.attention``).
"""

import ml_collections

from experiments.configs.options import parse, pruning_fields


def get_config(arg: str = 'model=resnet_digits') -> ml_collections.ConfigDict:
  options = parse(arg, model='resnet_digits', runlocal=False)
  config = ml_collections.ConfigDict(dict(
      **pruning_fields(options.model),
      validation_split='validation',   # the objective
      test_split='test',               # the final comparison
      sampler='gp',                    # gp (Gaussian process) | tpe
      storage='',                      # '' = SQLite in the workdir
      space=dict(
          groups=('low', 'middle', 'high', 'fc'),
          rules=('epsilon', 'gamma', 'zplus', 'alpha_beta'),
          eps=(1e-9, 1.0),             # log scale
          gamma=(1e-3, 10.0),          # log scale
          signed=(False, True),        # rank by signed R or by |R|
          boundaries=(1 / 3, 2 / 3),   # where middle and high convs (or
                                       # ViT blocks) start
          attention=('attn_lrp', 'cp_lrp'),  # ViTs: the attention rule
          n_per_class=(),              # e.g. (1, 3, 10): search it too
      ),
  ))
  if options.runlocal:
    config.n_per_class = 3
    config.rates = (0.0, 0.1, 0.2, 0.3, 0.4)
  return config
