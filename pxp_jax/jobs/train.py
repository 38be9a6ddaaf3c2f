"""Supervised training with optax, resumable from orbax checkpoints.

``train_and_evaluate(config, workdir)`` trains ``config.model`` on
``config.dataset``, saves a checkpoint in ``workdir/checkpoints`` after every
epoch (a re-run with the same workdir continues from the last one), and at the
end writes ``workdir/results.json`` (validation and test accuracy) and an
exported model in ``workdir/export`` that ``pxp_jax.checkpoints.load`` reads.
The config is described in ``experiments/configs/train.py``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp

from pxp_jax import checkpoints, data, distribute, models, prune
from pxp_jax.jobs import logs, validate
from pxp_jax.jobs import workdir as workdir_lib
from pxp_jax.prune import training

# A trained model whose validation accuracy is below this multiple of
# chance (1 / classes) is reported as not having learned.
CHANCE_FACTOR = 1.5


def _optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  total = config.num_epochs * steps_per_epoch
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_epochs * steps_per_epoch, total)
  return training.optimizer(config.optimizer, schedule,
                            weight_decay=config.weight_decay,
                            momentum=config.momentum)


@workdir_lib.exclusive(validate.train)
def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains, checkpoints every epoch, evaluates, exports; returns the results.

  Args:
    config: see ``experiments/configs/train.py``.
    workdir: output folder; an existing one is resumed.

  Returns:
    The dict written to ``workdir/results.json``.
  """
  workdir_lib.claim(workdir, config)
  tb = logs.writer(workdir, config)  # TensorBoard: workdir/tensorboard
  preprocess = data.Preprocess(**config.preprocess)
  split = lambda name: data.load(config.dataset, name,  # noqa: E731
                                 data_dir=config.data_dir or None)
  train_source = split(config.splits.train)
  classes = getattr(train_source, 'num_classes', None)
  if classes and classes > config.num_classes:
    raise ValueError(f'--config.num_classes={config.num_classes}, but '
                     f'{config.dataset!r} has {classes} classes: set '
                     f'--config.num_classes={classes}')
  model = models.create(config.model, config.num_classes,
                        **config.model_overrides)
  # Data-parallel over the mesh: each process reads its part of the data
  # in its part of every global batch (``pxp_jax.distribute``).
  mesh = distribute.make_mesh(config.get('mesh'))
  local_batch = distribute.local_batch(config.batch_size, mesh)
  own_part = distribute.process_part(train_source)
  steps_per_epoch = (len(train_source) // jax.process_count()) // local_batch
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size {config.batch_size} exceeds the '
                     f'{len(train_source)} training examples')

  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  size = preprocess.crop_size
  variables = model.init(init_key, jnp.zeros((1, size, size, 3), jnp.float32))
  tx = _optimizer(config, steps_per_epoch)
  step_fn = training.train_step(model, tx, train=True,
                                label_smoothing=config.label_smoothing)
  # What a checkpoint holds: the variables (BatchNorm statistics too) and
  # the optimiser state.
  state = dict(variables=variables, opt_state=tx.init(variables['params']))
  state, step_key = distribute.replicate((state, step_key), mesh)
  local_eval = distribute.local_batch(config.eval_batch_size, mesh)

  def accuracy_on(variables, source):
    """Top-1 accuracy on ``source``, its batches split over the mesh."""
    return prune.accuracy(
        model, variables,
        data.batches(distribute.process_part(source), preprocess, local_eval),
        mesh=mesh, n_batches=distribute.batch_count(len(source), local_eval),
        batch_size=local_eval)

  manager = ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  start_epoch = 0
  if manager.latest_step() is not None:
    start_epoch = manager.latest_step()
    state = manager.restore(start_epoch,
                            args=ocp.args.StandardRestore(state))
    log(f'resuming from epoch {start_epoch} in {workdir}')

  val_source = split(config.splits.validation)
  for epoch in range(start_epoch, config.num_epochs):
    start = time.time()
    loss_sum = correct = seen = 0
    for step, batch in enumerate(itertools.islice(data.batches(
        own_part, preprocess, local_batch, shuffle=True,
        seed=config.seed + epoch, drop_remainder=True), steps_per_epoch)):
      key = jax.random.fold_in(step_key, epoch * steps_per_epoch + step)
      arrays = distribute.global_batch(batch, mesh,
                                       local_batch * jax.process_count())
      batch = dict(image=training.shift(arrays['image'], key,
                                        config.augment_shift),
                   label=arrays['label'])
      params, stats, opt_state, metrics = step_fn(
          state['variables']['params'], _frozen(state['variables']),
          state['opt_state'], batch)
      state = dict(variables={**stats, 'params': params},
                   opt_state=opt_state)
      loss, right = metrics['loss'], metrics['correct']
      size = local_batch * jax.process_count()
      if not math.isfinite(float(loss)):
        raise FloatingPointError(
            f'the training loss is {float(loss)} at epoch {epoch + 1}, step '
            f'{step + 1}; nothing of this epoch was saved or exported. Lower '
            f'--config.learning_rate={config.learning_rate} (or raise '
            '--config.warmup_epochs) and train in a new --workdir')
      loss_sum += float(loss) * size
      correct += int(right)
      seen += size
    manager.save(epoch + 1, args=ocp.args.StandardSave(state))
    val_acc = accuracy_on(state['variables'], val_source)
    log(f'epoch {epoch + 1}/{config.num_epochs}  loss {loss_sum / seen:.4f}'
          f'  train acc {correct / seen:.4f}  val acc {val_acc:.4f}'
          f'  ({time.time() - start:.1f}s)')
    tb.write_scalars(epoch + 1, {'loss': loss_sum / seen,
                                 'train_accuracy': correct / seen,
                                 'validation_accuracy': val_acc})
    tb.flush()
  manager.wait_until_finished()
  manager.close()

  variables = state['variables']
  accuracy = {name: accuracy_on(variables, split(getattr(config.splits, name)))
              for name in ('validation', 'test')}
  results = dict(checkpoint=config.name, validation_accuracy=accuracy['validation'],
                 test_accuracy=accuracy['test'], epochs=config.num_epochs)
  chance = 1 / config.num_classes
  if accuracy['validation'] < CHANCE_FACTOR * chance:
    log(f'warning: validation accuracy {accuracy["validation"]:.4f} is near '
        f'chance ({chance:.4f}): this model has not learned. A diverged run '
        f'(lower --config.learning_rate={config.learning_rate}) or too few '
        'epochs? It is exported all the same.')
  export = workdir / 'export'
  if not (export / checkpoints.RECIPE).exists():
    checkpoints.save(
        export, config.model, variables, num_classes=config.num_classes,
        overrides=config.model_overrides.to_dict(), dataset=config.dataset,
        preprocess=config.preprocess.to_dict(), **results)
  if distribute.is_primary():
    (workdir / 'results.json').write_text(json.dumps(results, indent=2)
                                          + '\n')
  tb.write_scalars(config.num_epochs, {'test_accuracy': accuracy['test']})
  tb.close()
  log(f'exported to {export}')
  return results


def _frozen(variables):
  return {k: v for k, v in variables.items() if k != 'params'}


def log(message: str) -> None:
  """A console line, from process 0."""
  if distribute.is_primary():
    print(message, flush=True)
