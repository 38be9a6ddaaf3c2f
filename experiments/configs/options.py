"""What the pruning and search configs share: the parsing of the
``key=value,flag`` argument after the config file's name, and the fields
that name the model, its data, the reference samples and the units."""

from pxp_jax import pruning


def parse(arg: str) -> dict[str, str | bool]:
  """``'model=vit_digits,runlocal'`` -> ``{'model': 'vit_digits',
  'runlocal': True}``."""
  return dict(kv.split('=', 1) if '=' in kv else (kv, True)
              for kv in arg.split(',') if kv)


def pruning_fields(options: dict) -> dict:
  """The model (a checkpoint name or folder), its data and reference
  samples, the units to prune (MLP neurons for a ViT, filters otherwise) and
  the pruning rates."""
  model = options.get('model', 'resnet_digits')
  vit = 'vit' in model
  return dict(
      model=model,
      dataset='',                  # '' = the checkpoint's dataset
      data_dir='',
      classes=(),                  # restrict to these classes (few-class task)
      reference_split='train',
      n_per_class=10,              # reference samples per class (seeded)
      seed=0,
      units='neurons' if vit else 'filters',   # filters | neurons | heads
      absolute_tokens=vit,         # |R| per token before summing tokens
      rates=pruning.DEFAULT_RATES,
      batch_size=32,               # reference samples per relevance pass
      eval_batch_size=512,
  )
