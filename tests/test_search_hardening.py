"""The search's bad inputs: each a clear error before anything is loaded
or compiled, naming the field (or file) and what to do; and an extended
search draws new parameters."""
# pylint: disable=protected-access

import json
import math
import sqlite3
import time

import optuna
import pytest

from experiments.configs import search as search_configs
from pxp_jax.jobs import search
from pxp_jax.lrp import attribution
from pxp_jax.search import driver, workers


def _config(digits_dir='', **changes):
  config = search_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir = digits_dir
  config.n_per_class = 2
  config.sampler = 'tpe'
  config.update(changes)
  return config


@pytest.mark.parametrize('n_trials,timeout,changes,message', [
    (0, None, {}, r'--n_trials=0: .* >= 1'),
    (-3, None, {}, r'--n_trials=-3'),
    (1, 0, {}, r'--timeout=0: .* > 0'),
    (1, -5.0, {}, r'--timeout=-5.0'),
    (1, math.nan, {}, r'--timeout=nan'),
    # The fields the prune job shares (pxp_jax.jobs.validate.pruning):
    (1, None, dict(n_per_class=0), r'config.n_per_class=0 .* >= 1'),
    (1, None, dict(random_seeds=0), r'config.random_seeds=0'),
    (1, None, dict(rates=()), r'config.rates=\(\) names no rate'),
    (1, None, dict(sampler='random'), r"config.sampler='random' .* gp or tpe"),
    (1, None, dict(objective='accuracy'), r'objective must be one of'),
    (1, None, dict(validation_split=''), r'config.validation_split must name'),
])
def test_bad_counts_and_fields_fail_before_anything_runs(
    tmp_path, n_trials, timeout, changes, message):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=message):
    search.search(_config(**changes), workdir, n_trials=n_trials,
                  timeout=timeout)
  assert not workdir.exists()  # nothing written, nothing loaded


@pytest.mark.parametrize('change,message', [
    (dict(eps=(0.0, 1.0)), r'space.eps .* 0 < low <= high.*\(0.0, 1.0\)'),
    (dict(eps=(-1.0, 1.0)), r'space.eps'),
    (dict(gamma=(-1.0, 1.0)), r'space.gamma .*\(-1.0, 1.0\)'),
    (dict(gamma=(10.0, 1.0)), r'space.gamma'),
    (dict(gamma=(1e-3, math.inf)), r'space.gamma .*finite'),
    (dict(eps=(math.nan, 1.0)), r'space.eps'),
    (dict(eps=(1e-3,)), r'space.eps must be a range \(low, high\)'),
    (dict(eps=(1e-3, 1.0, 2.0)), r'space.eps must be a range'),
    (dict(rules=('Epsilon',)), r"space.rules has \['Epsilon'\]; choose among"),
    (dict(rules=('epsilon', 'epsilon')), r'space.rules=.* names a value twice'),
    (dict(groups=('conv',)), r"space.groups has \['conv'\]"),
    (dict(groups=('low', 'low')), r'space.groups=.* twice'),
    (dict(attention=('softmax',)), r"space.attention has \['softmax'\]"),
    (dict(attention=()), r'space.attention is empty'),
    (dict(signed=()), r'space.signed is empty'),
    (dict(signed=('yes',)), r"space.signed has \['yes'\]"),
    (dict(zero_bias=(2,)), r'space.zero_bias has \[2\]'),
    (dict(n_per_class=(0,)), r'space.n_per_class=0 .* >= 1'),
    (dict(n_per_class=(2, 2)), r'space.n_per_class=\(2, 2\) .* twice'),
    (dict(boundaries=(0.5,)), r'space.boundaries .*\(0.5,\)'),
])
def test_bad_search_spaces_fail_before_anything_runs(tmp_path, change,
                                                     message):
  config = _config()
  config.space.update(change)
  with pytest.raises(ValueError, match=message):
    search.search(config, tmp_path / 'run', n_trials=1)
  assert not (tmp_path / 'run').exists()


def _sqlite_garbage(path):
  path.write_bytes(b'not a database at all\n' * 50)


def _sqlite_cut(path):
  storage = search._storage('', path.parent)
  optuna.create_study(study_name=search.STUDY, storage=storage)
  storage.engine.dispose()
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 3])


def _sqlite_foreign(path):
  con = sqlite3.connect(path)
  con.execute('CREATE TABLE notes (x INTEGER)')
  con.commit()
  con.close()


def _journal_garbage(path):
  path.write_bytes(b'\x00\x01garbage\nmore garbage\n')


def _journal_bad_entry(path):
  path.write_text('{"op_code": 0, "worker_id": "a", "study_name": '
                  '"pxp_search", "directions": [1]}\n{"op_code": 5}\n')


@pytest.mark.parametrize('spec,name,damage,message', [
    ('', 'study.db', _sqlite_garbage, 'not a readable optuna study'),
    ('', 'study.db', _sqlite_cut, 'not a readable optuna study'),
    ('', 'study.db', _sqlite_foreign, r"database of something else.*notes"),
    ('journal', 'study.journal', _journal_garbage,
     'not a readable optuna study'),
    ('journal', 'study.journal', _journal_bad_entry,
     'not a readable optuna study'),
])
def test_damaged_study_files_are_named_with_the_fix(tmp_path, spec, name,
                                                    damage, message):
  damage(tmp_path / name)
  with pytest.raises(ValueError, match=message) as error:
    search._storage(spec, tmp_path)
  if 'readable' in message:
    assert str(tmp_path / name) in str(error.value)
    assert 'Delete it' in str(error.value) and '--workdir' in str(error.value)


@pytest.mark.filterwarnings('ignore:Heartbeat of storage:UserWarning')
def test_a_journal_entry_cut_by_a_kill_is_dropped(tmp_path):
  """A worker killed while appending leaves an entry without its line end:
  it is removed, so the next append starts a line of its own."""
  path = tmp_path / 'study.journal'
  storage = search._storage('journal', tmp_path)
  optuna.create_study(study_name=search.STUDY, storage=storage)
  whole = path.read_bytes()
  path.write_bytes(whole + b'{"op_code": 5, "worker_id": "a", "study_id"')
  storage = search._storage('journal', tmp_path)
  assert path.read_bytes() == whole
  study = optuna.load_study(study_name=search.STUDY, storage=storage)
  study.tell(study.ask(), 1.0)
  again = optuna.load_study(study_name=search.STUDY,
                            storage=search._storage('journal', tmp_path))
  assert [t.value for t in again.trials] == [1.0]


def test_damaged_study_fails_the_job_before_loading(tmp_path):
  _sqlite_garbage(tmp_path / 'study.db')
  compiled = attribution.compiled_programs()
  with pytest.raises(ValueError, match=f'{tmp_path / "study.db"} is not a '
                     'readable optuna study'):
    search.search(_config(), tmp_path, n_trials=1)
  assert attribution.compiled_programs() == compiled
  assert not (tmp_path / 'tensorboard').exists()


def test_sqlite_storage_in_a_missing_folder(tmp_path):
  with pytest.raises(ValueError, match='folder .*/no/such does not exist'):
    search._storage(f'sqlite:///{tmp_path}/no/such/s.db', tmp_path)
  with pytest.raises(ValueError, match='is a folder'):
    search._storage(f'sqlite:///{tmp_path}', tmp_path)


def test_study_of_another_config_names_the_file(tmp_path):
  storage = search._storage('', tmp_path)
  study = optuna.create_study(study_name=search.STUDY, storage=storage,
                              direction='maximize')
  study.set_user_attr('config', json.dumps({'model': 'vit_digits'}))
  with pytest.raises(ValueError, match=(
      f'in the file {tmp_path / "study.db"} is a search of a different '
      r'config \(differs in: .*model.*\).*new --workdir')):
    search._study(_config(), storage, tmp_path, search._space(_config()))


def test_a_nan_objective_stops_the_search():
  assert driver.finite(0.5, 3, {}, 'A_PR') == 0.5
  with pytest.raises(FloatingPointError, match='trial 3: the validation A_PR '
                     'is nan.*config.rates'):
    driver.finite(math.nan, 3, {'low.rule': 'gamma'}, 'A_PR')


def test_unknown_split_fails_before_compiling(digits_dir, tmp_path):
  compiled = attribution.compiled_programs()
  with pytest.raises(ValueError, match="--config.validation_split='valid': "
                     "'digits' has no split 'valid'"):
    search.search(_config(digits_dir, validation_split='valid'), tmp_path,
                  n_trials=1)
  assert attribution.compiled_programs() == compiled


@pytest.mark.filterwarnings('ignore::optuna.exceptions.ExperimentalWarning')
def test_an_extended_search_draws_new_parameters(tmp_path):
  """2 trials, then the same study extended to 4 by a new process (a new
  sampler, the same seed): 4 different parameter sets, the first 2 kept.
  The space leaves out the usual composites, so every trial is drawn."""
  config = _config()
  config.space.rules = ('gamma', 'alpha_beta')
  space = search._space(config)

  def run(n_trials):
    storage = search._storage('', tmp_path)
    study = search._study(config, storage, tmp_path, space)

    def objective(trial):
      params = space.suggest(trial)
      return params['low.eps'] * params['fc.gamma']  # any function of them

    workers.run(study, storage, objective, n_trials,
                deadline=time.time() + 60, callbacks=[])
    storage.engine.dispose()
    return [t.params for t in study.get_trials(deepcopy=False)]

  first = run(2)
  extended = run(4)
  assert len(first) == 2 and len(extended) == 4
  assert extended[:2] == first
  assert len({json.dumps(p, sort_keys=True) for p in extended}) == 4
