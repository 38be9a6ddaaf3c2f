r"""Speed of the two halves of a PXP experiment against the reference's way.

  python benchmarks/pruning_speed.py [--samples=32] [--batch=16]

1. Relevance collection: per-filter LRP relevance (EpsilonPlus) of
   torchvision's ResNet-18 at 224x224 over ``--samples`` reference samples.
   Reference procedure: one zennit pass per sample at batch 1 (as the PXP
   reference does), hooks reading the relevance at every conv output.
   pxp_jax: ``criteria.get('lrp', ...).score`` in batches of ``--batch``.
   Compilation and zennit's set-up are excluded (one warm-up call each).
2. The sweep: 6 criteria x 20 rates of the shipped ``resnet_digits`` on the
   digits test split, as one compiled program (``prune.sweep_accuracy``)
   against 120 separate evaluations, each of a model whose pruned filters are
   baked in (as the reference zeroes weights and evaluates, once per rate).
"""

import os
import time

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see attribution_speed.py

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top
import torchvision  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

from pxp_jax import checkpoints, composites, convert, data, prune  # pylint: disable=g-import-not-at-top
from pxp_jax.models import structure  # pylint: disable=g-import-not-at-top
from pxp_jax.prune import criteria  # pylint: disable=g-import-not-at-top

_SAMPLES = flags.DEFINE_integer('samples', 32, 'Reference samples.')
_BATCH = flags.DEFINE_integer('batch', 16, 'pxp_jax batch size.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (digits).')


def _reference_collection(model, x, labels):
  """The reference's loop: one zennit EpsilonPlus pass per sample."""
  from zennit import composites as zc  # pylint: disable=g-import-not-at-top
  from zennit.attribution import Gradient  # pylint: disable=g-import-not-at-top
  from zennit.torchvision import ResNetCanonizer  # pylint: disable=g-import-not-at-top
  convs = {n: m for n, m in model.named_modules()
           if isinstance(m, torch.nn.Conv2d)}
  totals = {}
  grads = {}

  def capture(name):
    def hook(module, inputs, output):
      del module, inputs
      output.register_hook(lambda g: grads.__setitem__(name, g))
    return hook

  composite = zc.EpsilonPlus(canonizers=[ResNetCanonizer()])
  with Gradient(model, composite) as attributor:
    handles = [m.register_forward_hook(capture(n)) for n, m in convs.items()]
    start = None
    for i in range(len(x)):
      if i == 1:
        start = time.perf_counter()  # the first pass is the warm-up
      one_hot = torch.nn.functional.one_hot(labels[i:i + 1], 1000).float()
      attributor(x[i:i + 1], one_hot)
      for name, g in grads.items():
        totals[name] = totals.get(name, 0) + g.sum((2, 3)).abs()[0]
    elapsed = time.perf_counter() - start
    for h in handles:
      h.remove()
  return (len(x) - 1) / elapsed


def _collection(samples, batch):
  torch.manual_seed(0)
  torch_model = torchvision.models.resnet18().eval()
  model, variables = convert.from_torchvision('resnet18',
                                              torch_model.state_dict())
  rng = np.random.default_rng(0)
  x = rng.normal(size=(samples, 224, 224, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, size=samples)
  reference = _reference_collection(
      torch_model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
      torch.from_numpy(labels))
  units = structure.trace(model, variables, x[:1].shape).units('filters')
  lrp = criteria.get('lrp', composite=composites.epsilon_plus())
  run = lambda: lrp.score(model, variables, x, labels, units,  # noqa: E731
                          batch_size=batch)
  lrp.score(model, variables, x[:batch], labels[:batch], units,
            batch_size=batch)  # compile
  start = time.perf_counter()
  run()
  ours = samples / (time.perf_counter() - start)
  return reference, ours


def _sweep(data_dir):
  model, variables = checkpoints.load('resnet_digits')
  preprocess = data.Preprocess(
      **checkpoints.recipe('resnet_digits')['preprocess'])
  test = data.load('digits', 'test', data_dir=data_dir)
  images, labels = data.as_arrays(test, preprocess)
  found = structure.trace(model, variables, images[:1].shape)
  units = found.units('filters')
  rng = np.random.default_rng(0)
  per_criterion = {
      f'c{c}': prune.masks({k: rng.random(u.size) for k, u in units.items()},
                           prune.DEFAULT_RATES) for c in range(6)}
  stacked = prune.stack(per_criterion)
  batches = [dict(image=images, label=labels)]

  start = time.perf_counter()
  swept = prune.sweep_accuracy(model, variables, batches, stacked, 10)
  one_program = time.perf_counter() - start

  start = time.perf_counter()
  separate = []
  for row in range(len(swept)):
    masks = {k: np.asarray(v[row]) for k, v in stacked.items()}
    # The masks are constants of each program, as pruned weights are.
    predict = jax.jit(lambda x, m=masks: jnp.argmax(prune.masked_apply(
        model, variables, x, {k: jnp.asarray(v) for k, v in m.items()},
        found), -1))
    separate.append(np.mean(np.asarray(predict(images)) == labels))
  separate_time = time.perf_counter() - start
  np.testing.assert_allclose(separate, swept)
  return one_program, separate_time, len(swept)


def main(argv):
  del argv
  print(f'devices: {jax.devices()}; torch threads: {torch.get_num_threads()}')
  reference, ours = _collection(_SAMPLES.value, _BATCH.value)
  print('| relevance collection, ResNet-18 224x224, EpsilonPlus | images/s |')
  print('|---|---|')
  print(f'| reference procedure (zennit, batch 1 per sample) | {reference:.2f} |')
  print(f'| pxp_jax LRP criterion, batch {_BATCH.value} | {ours:.2f} |')
  print(f'| ratio | {ours / reference:.2f}x |')
  one, separate, rows = _sweep(_DATA_DIR.value)
  print()
  print(f'| sweep of {rows} masked models, resnet_digits, 360 test images '
        '| seconds (compilation included) |')
  print('|---|---|')
  print(f'| one compiled program (pxp_jax) | {one:.1f} |')
  print(f'| {rows} separate evaluations | {separate:.1f} |')
  print(f'| ratio | {separate / one:.2f}x |')


if __name__ == '__main__':
  app.run(main)
