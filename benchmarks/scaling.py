r"""How the job's two programs scale over devices, and an ImageNet-shaped run.

  python benchmarks/scaling.py --mode=devices [--counts=1,2,4,8]
  python benchmarks/scaling.py --mode=imagenet [--models=resnet50,vit_b16]
      [--classes=1000 --eval_images=50000]   # the full sizes (accelerator)

``devices``: relevance collection (the LRP criterion over 128 reference
images of the shipped ``resnet_digits``, ``Task.score``'s path) and the
evaluation sweep (24 mask rows over 256 images, ``sweep_accuracy``'s
path) on a mesh of 1, 2, 4 and 8 devices, each count in
its own process (forced host devices on a CPU:
``--xla_force_host_platform_device_count``); images per second and the ratio
to one device. On a CPU the forced devices share its cores, so the ratio
shows the cost of splitting, not a speed-up; on an accelerator host run it
with the real devices (``--counts`` up to the device count).

``imagenet``: the papers' ImageNet recipe at 224x224, 1000 classes (random
weights, synthetic images): LRP relevance of 10 reference images per class
and the sweep of 20 rates x 6 criteria over the evaluation images, through
the job's own code paths on a mesh of every device. Sizes below the full
ones (``--classes``, ``--eval_images``) are run as given and the full run's
time is extrapolated linearly (both programs are per-image); memory is
XLA's compiled memory analysis of each program (arguments + temporaries
per device) and, on an accelerator, the device's peak.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

import timing  # benchmarks/timing.py  # pylint: disable=g-import-not-at-top

_MODE = flags.DEFINE_enum('mode', 'devices', ['devices', 'imagenet'],
                          'Which measurement.')
_COUNTS = flags.DEFINE_list('counts', ['1', '2', '4', '8'], 'Device counts.')
_DEVICES = flags.DEFINE_integer('devices', 0, '(internal) one device count.')
_MODELS = flags.DEFINE_list('models', ['resnet50', 'vit_b16'], 'Models.')
_CLASSES = flags.DEFINE_integer('classes', 4, 'Classes (1000: the full run).')
_EVAL = flags.DEFINE_integer('eval_images', 64, 'Evaluation images '
                             '(50000: the full run).')
_BATCH = flags.DEFINE_integer('batch', 32, 'Reference images per relevance '
                              'pass (global).')
_EVAL_BATCH = flags.DEFINE_integer('eval_batch', 32, 'Evaluation images per '
                                   'sweep call (global).')
ROWS = 20 * 6  # rates x criteria
SWEEP_ROWS = 24  # mask rows of the device-count measurement
FULL_CLASSES, FULL_EVAL, REFS = 1000, 50000, 10


def _one_count(count: int) -> dict:
  """Relevance and sweep throughput on a mesh of ``count`` devices."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from pxp_jax import checkpoints, composites, distribute, prune  # pylint: disable=import-outside-toplevel
  from pxp_jax.models import structure
  from pxp_jax.prune import criteria  # pylint: disable=import-outside-toplevel

  mesh = distribute.make_mesh(None, jax.devices()[:count])
  model, variables = checkpoints.load('resnet_digits')
  variables = distribute.replicate(variables, mesh)
  found = structure.trace(model, variables, (1, 32, 32, 3))
  units = found.units('filters')
  rng = np.random.default_rng(0)
  images = rng.normal(size=(128, 32, 32, 3)).astype(np.float32)
  labels = (np.arange(128) % 10).astype(np.int32)
  lrp = criteria.LRP(composites.for_model(model, purpose='pruning',
                                          found=found))
  score = lambda: lrp.score(model, variables, images, labels, units,  # noqa: E731
                            batch_size=64, mesh=mesh)
  relevance = timing.best_seconds(score) / len(labels)
  masks = {k: (rng.random((SWEEP_ROWS, u.size)) > 0.3).astype(np.float32)
           for k, u in units.items()}
  batches = [dict(image=images, label=labels)] * 2
  sweep = lambda: prune.sweep_accuracy(model, variables, batches, masks, 10,  # noqa: E731
                                       mesh=mesh)
  forward = timing.best_seconds(sweep) / (256 * SWEEP_ROWS)
  return dict(devices=count, relevance_images_per_s=1 / relevance,
              sweep_passes_per_s=1 / forward)


def _devices_table():
  rows = []
  for count in map(int, _COUNTS.value):
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', ''),
               XLA_FLAGS=f'--xla_force_host_platform_device_count={count}')
    if env['JAX_PLATFORMS'] in ('', 'cpu'):
      env['JAX_PLATFORMS'] = 'cpu'
    out = subprocess.run(
        [sys.executable, __file__, '--mode=devices', f'--devices={count}'],
        env=env, capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = rows[0]
  print('| devices | relevance images/s | x 1 device | sweep masked '
        'passes/s | x 1 device |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['devices']} | {r['relevance_images_per_s']:.0f} | "
          f"{r['relevance_images_per_s'] / base['relevance_images_per_s']:.2f}"
          f" | {r['sweep_passes_per_s']:.0f} | "
          f"{r['sweep_passes_per_s'] / base['sweep_passes_per_s']:.2f} |")


def _imagenet_run(name: str) -> None:
  """The recipe's two programs at ImageNet size on every device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from pxp_jax import composites, distribute, models, prune  # pylint: disable=import-outside-toplevel
  from pxp_jax.models import structure
  from pxp_jax.prune import criteria  # pylint: disable=import-outside-toplevel

  mesh = distribute.make_mesh(None)
  model = models.create(name, FULL_CLASSES)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  variables = distribute.replicate(variables, mesh)
  found = structure.trace(model, variables, (1, 224, 224, 3))
  units = found.units(models.spec_for(model).default_units(found))
  rng = np.random.default_rng(0)
  refs = _CLASSES.value * REFS
  images = rng.normal(size=(refs, 224, 224, 3)).astype(np.float32)
  labels = np.repeat(np.arange(_CLASSES.value), REFS).astype(np.int32)
  lrp = criteria.LRP(composites.for_model(model, purpose='pruning',
                                          found=found))
  start = time.perf_counter()
  scores = lrp.score(model, variables, images, labels, units,
                     batch_size=_BATCH.value, mesh=mesh)
  relevance_s = time.perf_counter() - start
  masks = prune.stack({f'c{c}': prune.masks(
      {k: rng.random(u.size) for k, u in units.items()},
      prune.DEFAULT_RATES) for c in range(ROWS // len(prune.DEFAULT_RATES))})
  del scores

  def synthetic():
    step = distribute.local_batch(_EVAL_BATCH.value, mesh)
    for i in range(0, _EVAL.value, step):
      n = min(step, _EVAL.value - i)
      yield dict(image=rng.normal(size=(n, 224, 224, 3)).astype(np.float32),
                 label=(np.arange(i, i + n) % FULL_CLASSES).astype(np.int32))

  start = time.perf_counter()
  prune.sweep_accuracy(model, variables, synthetic(), masks, FULL_CLASSES,
                       mesh=mesh)
  sweep_s = time.perf_counter() - start
  full = (relevance_s * FULL_CLASSES / _CLASSES.value
          + sweep_s * FULL_EVAL / _EVAL.value)
  memory = _program_memory(model, variables, lrp, masks, mesh)
  peak = jax.devices()[0].memory_stats() or {}
  print(f"| {name} | {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"| {refs} refs: {relevance_s:.1f} s | {_EVAL.value} images x "
        f"{ROWS} rows: {sweep_s:.1f} s | {full / 60:.1f} min | "
        f"{memory['relevance']:.2f} / {memory['sweep']:.2f} GiB | "
        f"{peak.get('peak_bytes_in_use', 0) / 2**30:.2f} GiB |", flush=True)


def _program_memory(model, variables, lrp, masks, mesh) -> dict:
  """GiB per device of the relevance and sweep programs (arguments and
  temporaries, from XLA's compiled memory analysis)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from pxp_jax import attribute, distribute, prune  # pylint: disable=import-outside-toplevel

  batch = distribute.batch_multiple(mesh) * -(-_BATCH.value
                                              // distribute.batch_multiple(mesh))
  shape = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32,
                               sharding=distribute.batch_sharding(mesh))
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32,
                                sharding=distribute.batch_sharding(mesh))
  program = jax.jit(lambda v, x, t: attribute(
      model, v, x, t, lrp.composite, input_relevance=False,
      check_finite=False).units)
  relevance = program.lower(variables, shape, labels).compile(
  ).memory_analysis()
  run = prune.sweep_correct(model, mesh)
  eval_batch = jax.ShapeDtypeStruct(
      (distribute.batch_multiple(mesh) * -(-_EVAL_BATCH.value
                                           // distribute.batch_multiple(mesh)),
       224, 224, 3), jnp.float32, sharding=distribute.batch_sharding(mesh))
  eval_labels = jax.ShapeDtypeStruct(eval_batch.shape[:1], jnp.int32,
                                     sharding=distribute.batch_sharding(mesh))
  sweep = run.lower(variables, eval_batch, eval_labels,
                    {k: jnp.asarray(v) for k, v in masks.items()},
                    jnp.ones(FULL_CLASSES, bool)).compile().memory_analysis()
  gib = lambda m: (m.argument_size_in_bytes + m.temp_size_in_bytes) / 2**30  # noqa: E731
  return dict(relevance=gib(relevance), sweep=gib(sweep))


def main(argv):
  del argv
  if _DEVICES.value:
    print(json.dumps(_one_count(_DEVICES.value)), flush=True)
  elif _MODE.value == 'devices':
    _devices_table()
  else:
    print('| model | devices | relevance | sweep | full recipe (1000 classes, '
          '50,000 images) | memory per device: relevance / sweep program | '
          'device peak |')
    print('|---|---|---|---|---|---|---|')
    for name in _MODELS.value:
      _imagenet_run(name)


if __name__ == '__main__':
  app.run(main)
