"""What the configs share: the typed parsing of the ``key=value,flag``
argument after the config file's name, and the fields that name the model,
its data, the reference samples and the units."""

import ml_collections

from pxp_jax.prune import DEFAULT_RATES

_TRUE, _FALSE = ('1', 'true', 'yes', ''), ('0', 'false', 'no')


def parse(arg: str, **defaults) -> ml_collections.ConfigDict:
  """``'model=vit_digits,runlocal'`` against typed ``defaults`` (as
  big_vision's ``parse_arg``): each value takes its default's type, a bare
  key sets a bool, and an unknown key is an error naming the valid ones.

  Example::

    parse('model=vit_digits,runlocal', model='resnet_digits', runlocal=False)
  """
  out = dict(defaults)
  for item in filter(None, arg.split(',')):
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config option {key!r} in {arg!r}; valid '
                       f'options: {", ".join(sorted(defaults))}')
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in _TRUE + _FALSE:
        raise ValueError(f'config option {key} is a flag: write {key} or '
                         f'{key}=false, not {item!r}')
      out[key] = value.lower() in _TRUE
    else:
      try:
        out[key] = type(default)(value)
      except ValueError as error:
        raise ValueError(f'config option {key} takes a '
                         f'{type(default).__name__}, got {value!r}') from error
  return ml_collections.ConfigDict(out)


def pruning_fields(model: str) -> dict:
  """The model (a checkpoint name or folder), its data and reference
  samples, the units to prune and the pruning rates. Units default to the
  model family's choice (``pxp_jax.models.spec``): MLP neurons for a ViT,
  filters for a CNN."""
  return dict(
      model=model,
      dataset='',                  # '' = the checkpoint's dataset
      data_dir='',
      classes=(),                  # restrict to these classes (few-class task)
      class_draw=0,                # or draw this many classes with `seed`
      other_classes='excluded',    # excluded (-inf logits) | zeroed (the
                                   # reference: zero head rows, 0 logits)
      reference_split='train',
      n_per_class=10,              # reference samples per class (seeded)
      holdout_per_class=0,         # > 0: evaluating on reference_split reads
                                   # this many per class (never a reference)
      draws=1,                     # > 1: repeat with seeds seed, seed+1, ...
                                   # (class draws), mean and standard error
      seed=0,
      units='',                    # filters | neurons | heads; '' = family's
      absolute_tokens=True,        # lrp: |R| per token (else per sample)
      rates=DEFAULT_RATES,
      random_seeds=20,             # seeds of the random baseline (mean, SEM)
      batch_size=32,               # reference samples per relevance pass
      eval_batch_size=512,
  )


def scale_fields() -> dict:
  """Where and how the job runs: the device mesh (``pxp_jax.distribute``;
  -1 takes the devices the other axes leave), the precision and
  rematerialisation of relevance passes, and TensorBoard logging."""
  return dict(
      mesh=dict(
          data=-1,                 # data-parallel devices (-1: the rest)
          rows=1,                  # devices splitting the sweep's mask rows
      ),
      precision='float32',         # float32 | bfloat16 (relevance passes;
                                   # unit scores accumulate in float32)
      remat=False,                 # recompute each block's activations in
                                   # the backward pass (jax.checkpoint)
      tensorboard=True,            # clu metric writers in workdir/tensorboard
  )


def faithfulness_fields() -> dict:
  """The input-faithfulness analysis of heatmaps (prune job and search):
  region perturbation of the heatmaps of ``faithfulness`` evaluation
  images (0: off) with the ``perturbation`` settings."""
  return dict(
      faithfulness=0,              # > 0: this many images (faithfulness.*)
      perturbation=dict(
          patch_size=4,            # square patches (1: pixel flipping)
          steps=64,                # curve points (0: one patch per step)
          order='morf',            # morf (most relevant first) | lerf
          baseline='black',        # black (zero raw pixels) | mean (0)
      ),
  )
