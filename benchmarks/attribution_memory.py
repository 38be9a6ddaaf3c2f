r"""Memory of pxp_jax.attribute against the plain gradient of the same model,
and with rematerialised blocks against without.

  python benchmarks/attribution_memory.py [--batch=8] [--models=resnet18,vgg16_bn,vit_ti16]
      [--remat_models=resnet50,vit_b16] [--remat_batches=32,64,128]
      [--time_batch=4] [--reps=3]

XLA's own accounting of the compiled programs (``memory_analysis``): the
temporary buffers (activations kept for the backward pass and workspace) of
``attribute`` with each composite against ``jax.vjp`` of the model (input
gradient only), same batch of 224x224 inputs. Arguments (weights, inputs) are
the same for both and left out.

The second table is ``attribute(..., remat=True)`` (``jax.checkpoint`` per
block) against ``remat=False`` for the pruning pass (the family's pruning
composite, units' relevance only) at each of ``--remat_batches``: the bytes
the pass keeps from its forward for its backward pass
(``attribution.residual_bytes``, traced only) and the temporary memory of
both compiled programs (no run), with their ratios, and
the time of one call of each at ``--time_batch`` (median of ``--reps``
after a warm-up) and its ratio.
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from pxp_jax import attribute, composites, models, rules
from pxp_jax.lrp import attribution

import timing  # benchmarks/timing.py  # pylint: disable=g-import-not-at-top

_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_MODELS = flags.DEFINE_list('models', ['resnet18', 'vgg16_bn', 'vit_ti16'],
                            'Registered model names.')
_REMAT_MODELS = flags.DEFINE_list('remat_models', ['resnet50', 'vit_b16'],
                                  'Models of the remat table (none: skip).')
_REMAT_BATCHES = flags.DEFINE_list('remat_batches', ['32', '64', '128'],
                                   'Batch sizes of the remat table.')
_TIME_BATCH = flags.DEFINE_integer('time_batch', 4,
                                   'Batch of the remat timing (0: skip).')
_REPS = flags.DEFINE_integer('reps', 3, 'Timed calls of each program.')


def _temp_mib(compiled) -> float:
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def _pruning_pass(model, remat):
  """The jitted units-only relevance pass of the prune job."""
  composite = composites.for_model(model, purpose='pruning')
  return jax.jit(lambda v, x, t: attribute(
      model, v, x, t, composite, input_relevance=False, check_finite=False,
      remat=remat).units)


def remat_table():
  print()
  print('| model | batch | kept for backward MiB, remat off / on | ratio '
        '| XLA temp MiB, remat off / on | ratio |')
  print('|---|---|---|---|---|---|')
  timed = []
  for name in _REMAT_MODELS.value:
    model = models.create(name)
    abstract = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), abstract)
    for batch in map(int, _REMAT_BATCHES.value):
      x = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)
      t = jax.ShapeDtypeStruct((batch,), jnp.int32)
      composite = composites.for_model(model, purpose='pruning')
      saved = [attribution.residual_bytes(model, variables, x, composite,
                                          remat=remat) / 2**20
               for remat in (False, True)]
      temp = [_temp_mib(_pruning_pass(model, remat).lower(
          variables, x, t).compile()) for remat in (False, True)]
      print(f'| {name} | {batch} | {saved[0]:.0f} / {saved[1]:.0f} | '
            f'{saved[1] / saved[0]:.2f} | {temp[0]:.0f} / {temp[1]:.0f} | '
            f'{temp[1] / temp[0]:.2f} |', flush=True)
    if _TIME_BATCH.value:
      concrete = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
      if 'head' in concrete['params']:  # ViT heads start at zero
        head = concrete['params']['head']
        head['kernel'] = jax.random.normal(jax.random.key(1),
                                           head['kernel'].shape)
      x = jax.random.normal(jax.random.key(2),
                            (_TIME_BATCH.value, 224, 224, 3))
      t = jnp.zeros((_TIME_BATCH.value,), jnp.int32)
      ms = [1e3 * timing.median_seconds(
          lambda run=_pruning_pass(model, remat): run(concrete, x, t),
          _REPS.value) for remat in (False, True)]
      timed.append((name, ms))
  if timed:
    print()
    print('| model | batch | remat=False ms | remat=True ms | time ratio |')
    print('|---|---|---|---|---|')
    for name, (kept, recomputed) in timed:
      print(f'| {name} | {_TIME_BATCH.value} | {kept:.0f} | {recomputed:.0f} '
            f'| {recomputed / kept:.2f} |', flush=True)


def main(argv):
  del argv
  print(f'devices: {jax.devices()}')
  if _MODELS.value:
    print('| model | batch | composite | gradient MiB | attribute MiB | '
          'ratio |')
    print('|---|---|---|---|---|---|')
  for name in _MODELS.value:
    model = models.create(name)
    x = jnp.zeros((_BATCH.value, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    targets = jnp.zeros((_BATCH.value,), jnp.int32)
    grad = jax.jit(lambda v, x: jax.vjp(lambda a: model.apply(v, a), x)[1](
        jnp.ones((x.shape[0], 1000)))[0]).lower(variables, x).compile()
    if name.startswith('vit'):
      chosen = {'attn_lrp': composites.attn_lrp(), 'cp_lrp': composites.cp_lrp()}
    else:
      eps = rules.epsilon()
      chosen = {'epsilon': composites.pxp_groups(eps, eps, eps, eps),
                'epsilon_plus': composites.epsilon_plus(),
                'epsilon_gamma_box': composites.epsilon_gamma_box(-3.0, 3.0)}
    for comp_name, composite in chosen.items():
      # The composite is closed over, so its rules are fixed at compile time
      # as in an eager call.
      ours = jax.jit(lambda v, x, t, c=composite: attribute(
          model, v, x, t, c).input).lower(variables, x, targets).compile()
      g, a = _temp_mib(grad), _temp_mib(ours)
      print(f'| {name} | {_BATCH.value} | {comp_name} | {g:.0f} | {a:.0f} | '
            f'{a / g:.2f} |', flush=True)
  if _REMAT_MODELS.value:
    remat_table()


if __name__ == '__main__':
  app.run(main)
