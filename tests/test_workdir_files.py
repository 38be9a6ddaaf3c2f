"""Workdirs, config.json, score files, checkpoints and exports: bad files
give errors naming the file and the fix; interrupted writes are redone."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from experiments.configs import prune as prune_configs
from pxp_jax import checkpoints, convert
from pxp_jax.jobs import workdir as workdir_lib


def _config(**changes):
  config = prune_configs.get_config('model=resnet_digits,runlocal')
  config.update(changes)
  return config


def test_workdir_config_json_errors_and_rewrite(tmp_path, capsys):
  (tmp_path / 'file').write_text('x')
  for bad in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
    with pytest.raises(NotADirectoryError, match=f'{tmp_path / "file"} is a '
                       'file, not a folder'):
      workdir_lib.prepare(bad)
  work = workdir_lib.prepare(tmp_path / 'w')
  (work / 'config.json').write_text('{"model": "resn')
  with pytest.raises(ValueError, match=f'{work / "config.json"} is damaged.*'
                     'delete it.*new --workdir'):
    workdir_lib.claim(work, _config())
  # A workdir of a run that failed before writing results takes a new config.
  (work / 'config.json').write_text(
      _config(eval_split='bad').to_json_best_effort(sort_keys=True))
  (work / 'tensorboard').mkdir()
  (work / 'tensorboard' / 'events').write_text('')
  workdir_lib.claim(work, _config())
  assert 'replaced the config' in capsys.readouterr().out
  assert json.loads((work / 'config.json').read_text())['eval_split'] == 'test'
  (work / 'scores' / 'weight').mkdir(parents=True)
  (work / 'scores' / 'weight' / '_METADATA').write_text('{}')
  with pytest.raises(ValueError, match='different config.*eval_split.*'
                     'results: scores'):
    workdir_lib.claim(work, _config(eval_split='validation'))
  workdir_lib.claim(work, _config())  # the same config resumes


def test_a_second_job_on_a_workdir_is_refused_until_the_first_ends(tmp_path):
  (tmp_path / workdir_lib.LOCK).write_text('pid 1 on gone\n')  # stale
  with workdir_lib.lock(tmp_path) as path:
    with workdir_lib.lock(tmp_path):  # re-entrant in one process
      pass
    other = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(f'''
            from pxp_jax.jobs import workdir
            with workdir.lock({str(tmp_path)!r}):
              pass''')],
        capture_output=True, text=True, check=False)
    assert other.returncode != 0
    assert f'{path} is in use by another job (pid {os.getpid()}' in (
        other.stderr)
  with workdir_lib.lock(tmp_path):  # released
    pass


@pytest.mark.slow
def test_a_critical_section_waits_for_the_process_holding_it(tmp_path):
  """``critical``: the search's workers take turns (they wait, unlike a
  second job); the job lock does not block it."""
  got = tmp_path / 'got'
  with workdir_lib.lock(tmp_path), workdir_lib.critical(tmp_path) as path:
    other = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(f'''
            import pathlib, sys
            from pxp_jax.jobs import workdir
            print('ready', flush=True)
            with workdir.critical({str(tmp_path)!r}):
              pathlib.Path({str(got)!r}).write_text('x')''')],
        stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == 'ready'
    time.sleep(2)  # time enough to take a free lock
    assert other.poll() is None and not got.exists()  # it waits
    assert (path / workdir_lib.SECTION_LOCK).exists()
  assert other.wait(timeout=120) == 0 and got.exists()
  other.stdout.close()
  assert workdir_lib.results(tmp_path) == ['got']  # the locks are no results


def test_score_files_that_cannot_be_read_name_the_folder(tmp_path):
  path = tmp_path / 'scores' / 'weight'
  scores = {'conv1': np.arange(4.0)}
  got = workdir_lib.cached_scores(path, lambda: scores, {'conv1': 4})
  again = workdir_lib.cached_scores(path, lambda: pytest.fail('recomputed'),
                                    {'conv1': 4})
  np.testing.assert_array_equal(again['conv1'], got['conv1'])
  with pytest.raises(ValueError, match=f'other units.*delete the folder '
                     f'{path}'):
    workdir_lib.cached_scores(path, dict, {'conv1': 5})
  (path / '_METADATA').write_text('{"tree')
  with pytest.raises(ValueError, match=f'score file {path} is damaged.*'
                     f'delete the folder {path}'):
    workdir_lib.cached_scores(path, dict, {'conv1': 4})


def test_checkpoint_files_that_disagree_name_the_mismatch(tmp_path):
  with pytest.raises(FileNotFoundError, match="did you mean 'vit_digits'"):
    checkpoints.load('vit_digts')
  model, variables = checkpoints.load('resnet_digits')
  spec = checkpoints.recipe('resnet_digits')
  path = tmp_path / 'c'
  shutil.copytree(checkpoints._resolve('resnet_digits'), path)  # pylint: disable=protected-access
  spec['num_classes'] = 5
  (path / 'model.json').write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r'(?s)c/model.json .*num_classes 5.*'
                     r'does not describe.*wrong shape: params/fc/bias \(10,\) '
                     r'\(expected \(5,\)\)'):
    checkpoints.load(path)
  (path / 'model.json').write_text('{"model": ')
  with pytest.raises(ValueError, match='model.json is damaged'):
    checkpoints.load(path)
  shutil.rmtree(path / 'variables')
  (path / 'model.json').write_text(json.dumps(spec))
  with pytest.raises(FileNotFoundError, match='no variables/ folder'):
    checkpoints.load(path)
  with pytest.raises(ValueError, match=r'(?s)do not fit model .resnet_tiny.*'
                     'unexpected: batch_stats/layer1/1'):
    checkpoints.save(tmp_path / 'tiny', 'resnet_tiny', variables,
                     num_classes=10, preprocess=spec['preprocess'])
  assert not (tmp_path / 'tiny').exists()
  del model


def test_an_interrupted_save_is_replaced_and_exports_are_whole(tmp_path):
  model, variables = checkpoints.load('resnet_digits')
  path = checkpoints.save(tmp_path / 'c', 'resnet18_small', variables,
                          num_classes=10)
  (path / 'model.json').unlink()  # killed before model.json
  with pytest.raises(FileNotFoundError, match='interrupted save'):
    checkpoints.load(path)
  checkpoints.save(path, 'resnet18_small', variables, num_classes=10)
  with pytest.raises(FileExistsError, match='already holds a checkpoint.*'
                     'overwrite=True'):
    checkpoints.save(path, 'resnet18_small', variables, num_classes=10)
  checkpoints.save(path, 'resnet18_small', variables, num_classes=10,
                   overwrite=True, note='second')
  assert checkpoints.recipe(path)['note'] == 'second'
  _, again = checkpoints.load(path)
  np.testing.assert_array_equal(again['params']['fc']['kernel'],
                                variables['params']['fc']['kernel'])
  out = convert.save_torchvision(tmp_path / 'new' / 'm.npz', model, variables)
  assert os.listdir(tmp_path / 'new') == ['m.npz'] and out.endswith('m.npz')
