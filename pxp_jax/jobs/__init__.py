"""The experiments behind the binaries in ``experiments/``.

  task.py      the model, data, reference samples and units, built once
  report.py    criteria -> accuracy curves -> summaries, tables, plots
  prune.py     the pruning job
  search.py    the Bayesian search over composites
  train.py     training and export of a checkpoint
  workdir.py   one config per workdir
"""
