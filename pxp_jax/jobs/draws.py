"""A job repeated over seeds: the PXP reference's class draws.

With ``config.draws = n > 1`` a job runs ``n`` times, with seeds ``seed,
seed + 1, ...`` (each seed draws its own classes with ``class_draw`` and its
own reference samples), each in ``workdir/draw_<k>`` (resumable like any
run), and the curves are summarised by their mean over draws and its
standard error (``report.over_draws``), as the paper reports its few-class
results.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Callable
from typing import Any

from pxp_jax import distribute
from pxp_jax.jobs import report, validate, workdir as workdir_lib


def repeat(job: Callable[..., dict], config, workdir, *, stem: str,
           **kwargs) -> dict[str, Any]:
  """``job(config, workdir, **kwargs)``, or ``config.draws`` runs of it
  summarised in ``workdir/<stem>.json/.csv/.png``.

  Args:
    job: ``pxp_jax.jobs.prune.prune`` or ``pxp_jax.jobs.search.search``
      (returning results with a summary per criterion).
    config: the job's config; its ``draws`` and ``seed`` set the repeats.
    workdir: the output folder.
    stem: the summary's file name (``results``, ``comparison``).
    **kwargs: more arguments of ``job``.

  Returns:
    The job's results, or their summary over draws.
  """
  if config.draws == 1:
    return job(config, workdir, **kwargs)  # the job checks its config
  validate.for_job(job)(config)  # before the draws' workdir is claimed
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.claim(workdir, config)
  runs = []
  for k in range(config.draws):
    one = copy.deepcopy(config)
    one.seed, one.draws = config.seed + k, 1
    if distribute.is_primary():
      print(f'draw {k + 1} of {config.draws} (seed {one.seed})', flush=True)
    runs.append(job(one, workdir / f'draw_{k}', **kwargs))
  summary = report.over_draws(runs)
  report.write(workdir, stem, summary, xlabel='pruned units (%)',
               title=f'{config.model}: mean of {config.draws} draws '
               f'({summary["split"]} split)')
  if distribute.is_primary():
    print(report.table(summary), flush=True)
  return summary
