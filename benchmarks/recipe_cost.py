r"""What the papers' ImageNet recipes cost on this machine, from per-image times.

  python benchmarks/recipe_cost.py [--models=resnet50,vit_b16] [--batch=8]

For each model at 224x224 with 1000 classes (random weights): the time per
image of a masked forward pass (``prune.sweep_correct``, the evaluation's
program, four mask rows at a time) and of LRP unit relevance with the
family's pruning composite (``attribute(..., input_relevance=False)``), the
ratio of the two, and what the prune recipe (Table 1) costs per draw: 20
rates x (5 criteria + 20 random seeds) masked passes per evaluation image
(50 per class, ImageNet's validation split) plus relevance on 10 reference
samples per class. Compilation is excluded (one warm-up call each); the
best of three runs counts.
"""

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

from pxp_jax import attribute, composites, models, prune  # pylint: disable=g-import-not-at-top
from pxp_jax.models import structure

import timing  # benchmarks/timing.py  # pylint: disable=g-import-not-at-top

_MODELS = flags.DEFINE_list('models', ['resnet50', 'vit_b16'], 'Models.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per call.')
ROWS = 4  # mask rows per sweep call
PASSES = 20 * (5 + 20)  # rates x (criteria + random seeds) per eval image


def main(argv):
  del argv
  batch = _BATCH.value
  print(f'{jax.devices()[0].device_kind}, batch {batch}')
  print('| model | forward ms/image | LRP ms/image | LRP / forward | '
        'Table 1 draw, 3 / 100 / 1000 classes |')
  print('|---|---|---|---|---|')
  for name in _MODELS.value:
    model = models.create(name, num_classes=1000)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 224, 224, 3)), jnp.float32)
    labels = jnp.arange(batch)
    variables = model.init(jax.random.key(0), x[:1])
    found = structure.trace(model, variables, x.shape)
    composite = composites.for_model(model, purpose='pruning', found=found)
    units = found.units(models.spec_for(model).default_units(found))
    masks = {k: jnp.ones((ROWS, u.size)) for k, u in units.items()}
    sweep = prune.sweep_correct(model)
    allowed = jnp.ones(1000, bool)
    forward = timing.best_seconds(lambda: jax.block_until_ready(  # noqa: B023
        sweep(variables, x, labels, masks, allowed))) / (batch * ROWS)
    relevance = timing.best_seconds(lambda: jax.block_until_ready(attribute(  # noqa: B023
        model, variables, x, labels, composite, input_relevance=False,
        check_finite=False).units)) / batch
    costs = []
    for classes in (3, 100, 1000):
      seconds = classes * (50 * PASSES * forward + 10 * relevance)
      costs.append(f'{seconds / 3600:.1f} h')
    print(f'| {name} | {forward * 1e3:.0f} | {relevance * 1e3:.0f} | '
          f'{relevance / forward:.1f} | {" / ".join(costs)} |', flush=True)


if __name__ == '__main__':
  app.run(main)
