r"""Size and speed of slim models against the dense one.

  python benchmarks/slim_latency.py [--batch=32] [--repeats=30]

For the shipped ``resnet_digits`` (conv filters) and ``vit_digits`` (MLP
neurons, the prune job's default units), PXP's scores (LRP with the
family's pruning composite over 10 reference samples per class of the
train split, one global ranking) prune 30, 50 and 70% of the units;
``pxp_jax.prune.slim`` removes them and ``slim.size_report`` measures parameters,
FLOPs (XLA's cost analysis) and the median latency of one compiled forward
pass at ``--batch``, each against the dense model measured in the same run
on the same device. ``units left``: units not removed, of which ``zeroed``
are pruned units kept with zero weights (ResNet: residual-stream channels
some writer keeps; ViT: ``fc2`` neurons, which write the token width).
"""

import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see attribution_speed.py

import platform  # pylint: disable=g-import-not-at-top

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

from pxp_jax import checkpoints, composites, data  # pylint: disable=g-import-not-at-top
from pxp_jax.prune import slim
from pxp_jax.models import structure
from pxp_jax.models import spec as spec_lib  # pylint: disable=g-import-not-at-top
from pxp_jax.prune import criteria, ranking  # pylint: disable=g-import-not-at-top

_BATCH = flags.DEFINE_integer('batch', 32, 'Images per forward pass.')
_REPEATS = flags.DEFINE_integer('repeats', 30, 'Timed calls per model.')
_RATES = flags.DEFINE_list('rates', ['0.3', '0.5', '0.7'], 'Pruning rates.')
_MODELS = flags.DEFINE_list('models', ['resnet_digits', 'vit_digits'],
                            'Shipped checkpoints.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (digits).')


def _masks(model, variables, rates):
  """PXP's masks: LRP scores of the family's default units, ranked
  globally."""
  train = data.load('digits', 'train', data_dir=_DATA_DIR.value)
  images, labels = data.reference_batch(train, data.DIGITS, 10)
  found = structure.trace(model, variables, (1, *images.shape[1:]))
  family = spec_lib.spec_for(model)
  units = found.units(family.default_units(found))
  lrp = criteria.get('lrp', composite=composites.get(
      family.pruning_composite(found)))
  scores = lrp.score(model, variables, images, labels, units)
  rows = ranking.masks(scores, rates)
  return units, [{k: np.asarray(m[i]) for k, m in rows.items()}
                 for i in range(len(rates))]


def main(argv):
  del argv
  rates = [float(r) for r in _RATES.value]
  shape = (_BATCH.value, 32, 32, 3)
  print(f'{platform.machine()}, {os.cpu_count()} CPUs, JAX {jax.__version__} '
        f'on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), '
        f'batch {_BATCH.value}, median of {_REPEATS.value} calls')
  print(f'{"model":14s} {"rate":>5s} {"units left":>10s} {"zeroed":>6s} '
        f'{"params":>9s} '
        f'{"MFLOPs":>8s} {"ms":>7s} {"params x":>8s} {"FLOPs x":>7s} '
        f'{"speed-up":>8s}')
  for name in _MODELS.value:
    model, variables = checkpoints.load(name)
    units, rows = _masks(model, variables, rates)
    dense = slim.size_report(model, variables, shape,
                             repeats=_REPEATS.value)
    total = sum(u.size for u in units.values())
    print(f'{name:14s} {0:5.0%} {total:10d} {0:6d} {dense.parameters:9d} '
          f'{dense.flops / 1e6:8.1f} {dense.latency_s * 1e3:7.2f} '
          f'{1:8.2f} {1:7.2f} {1:8.2f}')
    for rate, masks in zip(rates, rows):
      small = slim.slim(model, variables, masks)
      size = slim.size_report(small.model, small.variables, shape,
                              repeats=_REPEATS.value)
      left = total - sum(small.removed.values())
      zeroed = sum(small.kept_masked.values())
      print(f'{name:14s} {rate:5.0%} {left:10d} {zeroed:6d} '
            f'{size.parameters:9d} '
            f'{size.flops / 1e6:8.1f} {size.latency_s * 1e3:7.2f} '
            f'{size.parameters / dense.parameters:8.2f} '
            f'{size.flops / dense.flops:7.2f} '
            f'{dense.latency_s / size.latency_s:8.2f}')


if __name__ == '__main__':
  app.run(main)
