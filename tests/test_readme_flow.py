"""The README's Python flow (load, explain, score, evaluate, fine-tune,
slim, save) runs as written and gives what the prune job reports."""

import pathlib
import re

import jax
import numpy as np
import pytest

from pxp_jax import checkpoints, data, prune

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def _flow_and_table():
  text = README.read_text()
  using = text[text.index('## Using it'):]
  code = re.search(r'```python\n(.*?)```', using, re.S).group(1)
  row = re.search(r'^lrp +([0-9.]+) ', text, re.M)  # the quick start's table
  return code, float(row.group(1))


@pytest.mark.slow
def test_readme_flow_runs_and_reproduces_the_prune_job(digits_dir, tmp_path,
                                                       monkeypatch, capsys):
  code, job_a_pr = _flow_and_table()
  monkeypatch.setenv('PXP_JAX_DATA_DIR', digits_dir)
  monkeypatch.chdir(tmp_path)
  names = {}
  exec(compile(code, str(README), 'exec'), names)  # pylint: disable=exec-used
  assert 'a_pr' in capsys.readouterr().out

  summary = names['result'].summaries()['lrp']
  assert round(summary['a_pr'], 4) == job_a_pr  # the job's table, to the digit
  assert names['heatmaps'].shape == names['images'].shape[:3]
  assert np.isfinite(np.asarray(names['heatmaps'])).all()

  # The saved network is smaller and computes the fine-tuned masked model.
  model, variables = checkpoints.load(tmp_path / 'runs/resnet_digits_15')
  small_count = sum(np.size(v) for v in
                    jax.tree.leaves(variables['params']))
  full_count = sum(np.size(v) for v in
                   jax.tree.leaves(names['variables']['params']))
  assert small_count < full_count
  test = data.load('digits', 'test', data_dir=digits_dir)
  batches = lambda: data.batches(test, data.DIGITS, 256)  # noqa: E731
  masked = prune.accuracy(names['model'], names['tuned'], batches(),
                          masks=names['at_15'])
  assert prune.accuracy(model, variables, batches()) == pytest.approx(
      masked, abs=1 / len(test))
