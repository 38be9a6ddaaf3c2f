r"""Memory of pxp_jax.attribute against the plain gradient of the same model.

  python benchmarks/attribution_memory.py [--batch=8] [--models=resnet18,vgg16_bn,vit_ti16]

XLA's own accounting of the compiled programs (``memory_analysis``): the
temporary buffers (activations kept for the backward pass and workspace) of
``attribute`` with each composite against ``jax.vjp`` of the model (input
gradient only), same batch of 224x224 inputs. Arguments (weights, inputs) are
the same for both and left out.
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from pxp_jax import attribute, composites, models, rules

_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_MODELS = flags.DEFINE_list('models', ['resnet18', 'vgg16_bn', 'vit_ti16'],
                            'Registered model names.')


def _temp_mib(compiled) -> float:
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main(argv):
  del argv
  print(f'devices: {jax.devices()}')
  print('| model | batch | composite | gradient MiB | attribute MiB | ratio |')
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


if __name__ == '__main__':
  app.run(main)
