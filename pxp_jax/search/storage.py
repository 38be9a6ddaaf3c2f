"""Where a study's trials live: optuna storages opened, checked, repaired.

``open(spec, folder)`` reads a storage's form: ``''`` is SQLite in
``folder/study.db`` (one worker), ``'journal'`` the journal file
``folder/study.journal`` (several workers on one machine, no server),
``'journal:PATH'`` a journal file elsewhere (a shared file system), else an
SQLAlchemy URL (``postgresql://user@host:port/db``, ``sqlite:///PATH``). An
RDB storage has optuna's heartbeat (``workers.HEARTBEAT_S``,
``workers.GRACE_S``; a stale trial is retried); a journal's is
``workers.heartbeat``. The study's trials are read once when opened: a
study file that is not one (garbage, cut short, another program's
database) is an error naming it, and a journal entry cut off by a kill is
dropped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import sqlite3
import time
import warnings

import optuna
import sqlalchemy

from pxp_jax.search import workers

# What reading a damaged study file raises (SQLite, optuna's journal replay).
_UNREADABLE = (sqlalchemy.exc.DatabaseError, sqlite3.DatabaseError,
               ValueError, KeyError, TypeError, AttributeError, IndexError)


def open(spec: str, folder, study_name: str | None = None):  # pylint: disable=redefined-builtin
  """The optuna storage of ``spec`` (the forms above), relative to
  ``folder``; the trials of ``study_name`` (every study's if None) are read
  once here, so a damaged study file fails now, naming the file."""
  folder = pathlib.Path(folder)
  storage = _open(spec, folder)
  path = study_file(spec, folder)
  try:
    for study in storage.get_all_studies():
      if study_name is None or study.study_name == study_name:
        storage.get_all_trials(
            storage.get_study_id_from_name(study.study_name), deepcopy=False)
  except _UNREADABLE as error:
    if path is None:
      raise
    raise ValueError(_unreadable(path, error)) from None
  return storage


def study_file(spec: str, folder) -> pathlib.Path | None:
  """The file that holds the study of ``spec`` (None: a server)."""
  folder = pathlib.Path(folder)
  if spec == 'journal':
    return folder / 'study.journal'
  if spec.startswith('journal:'):
    return pathlib.Path(spec[len('journal:'):]).expanduser().resolve()
  url = sqlalchemy.engine.make_url(spec or f'sqlite:///{folder / "study.db"}')
  if (url.get_backend_name() != 'sqlite' or url.database in (None, '')
      or url.database.startswith((':memory:', 'file:'))):
    return None
  return pathlib.Path(url.database).expanduser().resolve()


def where(spec: str, folder) -> str:
  """Where the study of ``spec`` lives, in words."""
  path = study_file(spec, folder)
  if path is not None:
    return f'the file {path}'
  return f'the database {sqlalchemy.engine.make_url(spec).render_as_string()}'


def _unreadable(path: pathlib.Path, error) -> str:
  return (f'{path} is not a readable optuna study ({type(error).__name__}: '
          f'{error}): the file is damaged (cut short, overwritten) or is not '
          'a study of this search. Delete it to start the search anew (its '
          'trials are lost), or name another study file (the search job: a '
          'new --workdir, or another --config.storage).')


def _drop_cut_entry(path: pathlib.Path) -> None:
  """Removes the last entry of a journal when it was cut off (its writer
  killed while writing: no line end), under the journal's lock. Readers
  skip such an entry, but optuna would append the next one to it, and the
  file would no longer read."""
  with path.open('rb') as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b'\n':
      return
  lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
  lock.acquire()  # the lock optuna's appends take: no writer is half-way
  try:
    data = path.read_bytes()
    end = data.rfind(b'\n') + 1
    if end < len(data):
      with path.open('r+b') as f:
        f.truncate(end)
      print(f'{path}: removed its last entry, cut off when its writer was '
            f'killed ({len(data) - end} bytes)', flush=True)
  finally:
    lock.release()


def _check_sqlite(path: pathlib.Path) -> None:
  """An existing SQLite file is an optuna study: a database, intact, whose
  tables (if any) include optuna's."""
  if path.is_dir():
    raise ValueError(f'the SQLite study file {path} is a folder; name a file')
  if not path.is_file() or path.stat().st_size == 0:
    return
  try:
    with contextlib.closing(sqlite3.connect(f'file:{path}?mode=ro',
                                            uri=True)) as con:
      tables = {r[0] for r in con.execute(
          "SELECT name FROM sqlite_master WHERE type='table'")}
      intact = con.execute('PRAGMA quick_check').fetchone()[0]
  except sqlite3.OperationalError as error:
    if 'locked' in str(error):  # another worker writes: it is a database
      return
    raise ValueError(_unreadable(path, error)) from None
  except sqlite3.DatabaseError as error:
    raise ValueError(_unreadable(path, error)) from None
  if intact != 'ok':
    raise ValueError(_unreadable(path, f'integrity check: {intact}'))
  if tables and 'version_info' not in tables:
    raise ValueError(
        f'{path} is an SQLite database of something else (tables '
        f'{sorted(tables)}), not an optuna study; name another file (the '
        'search job: a new --workdir)')


def _journal(spec: str, folder: pathlib.Path):
  path = (folder / 'study.journal' if spec == 'journal' else
          pathlib.Path(spec[len('journal:'):]).expanduser().resolve())
  if spec != 'journal' and (not spec[len('journal:'):] or path.is_dir()):
    raise ValueError(f"storage {spec!r}: 'journal:PATH' names a file, e.g. "
                     "'journal:/shared/search/study.journal'")
  if not path.parent.is_dir():
    raise ValueError(f'storage {spec!r}: the folder {path.parent} does not '
                     'exist; create it (on a file system every worker '
                     'sees) or name another journal file')
  backend = optuna.storages.journal.JournalFileBackend
  if path.is_file() and path.stat().st_size:
    _drop_cut_entry(path)
    try:  # optuna replays the whole journal here
      return optuna.storages.journal.JournalStorage(backend(str(path)))
    except _UNREADABLE as error:
      raise ValueError(_unreadable(path, error)) from None
  return optuna.storages.journal.JournalStorage(backend(str(path)))


def _open(spec: str, folder: pathlib.Path):
  """``open`` without reading the study."""
  if spec == 'journal' or spec.startswith('journal:'):
    return _journal(spec, folder)
  if spec and '://' not in spec:
    raise ValueError(
        f"unknown storage {spec!r}; use '' (SQLite in the workdir, one "
        "worker), 'journal' (a journal file in the workdir: several workers "
        "on one machine), 'journal:PATH' (a journal file on a shared file "
        'system) or an SQLAlchemy URL such as '
        'postgresql://user@host:5432/db or mysql+pymysql://user@host/db')
  url = spec or f'sqlite:///{folder / "study.db"}'
  try:
    parsed = sqlalchemy.engine.make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    parsed.get_dialect()  # an unknown database is an error here
  except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
          ValueError) as error:
    raise ValueError(f'storage {spec!r} is not an SQLAlchemy URL that names '
                     f'a known database ({error}); e.g. '
                     'postgresql://user@host:5432/db') from None
  except ImportError as error:
    raise ImportError(_driver_hint(shown, parsed.get_backend_name(), error)
                      ) from error
  path = study_file(url, folder)
  if path is not None:  # an SQLite file
    if not path.parent.is_dir():
      raise ValueError(f'storage {spec or url!r}: the folder {path.parent} '
                       'does not exist; create it or name another file')
    _check_sqlite(path)
  if parsed.drivername == 'postgresql':  # no driver named: the installed one
    if (importlib.util.find_spec('psycopg') is None and
        importlib.util.find_spec('psycopg2') is not None):
      url = parsed.set(drivername='postgresql+psycopg2').render_as_string(
          hide_password=False)
  engine_kwargs = {}
  if parsed.get_backend_name() != 'sqlite':  # servers: fail fast, reconnect
    engine_kwargs = {'pool_pre_ping': True,
                     'connect_args': {'connect_timeout': 10}}
  for attempt in range(3):
    try:
      with warnings.catch_warnings():  # the heartbeat is experimental
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs,
            heartbeat_interval=workers.HEARTBEAT_S,
            grace_period=workers.GRACE_S,
            heartbeat_stale_trial_callback=workers.retry())
    except ImportError as error:
      raise ImportError(_driver_hint(shown, parsed.get_backend_name(),
                                     error)) from error
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
      if attempt == 2:  # workers starting together create the tables once
        raise
      time.sleep(1.0)
    except Exception as error:  # pylint: disable=broad-except
      if path is not None:
        if isinstance(error, _UNREADABLE):
          raise ValueError(_unreadable(path, error)) from None
        raise  # e.g. optuna's own word on an older table schema
      raise ConnectionError(
          f'cannot open the optuna storage {shown!r}: {error}\nCheck that '
          f'the database server runs and is reachable from this machine at '
          f'{parsed.host or "localhost"}:{parsed.port or "(default port)"}, '
          f'that the database {parsed.database!r} exists and that the user '
          f'{parsed.username!r} may connect to it.') from error


def _driver_hint(shown: str, backend: str, error) -> str:
  fix = {'postgresql': "pip install 'pxp_jax[postgres]' (psycopg2-binary)",
         'mysql': 'pip install pymysql and write mysql+pymysql://...'}
  return (f'the storage {shown!r} needs a database driver that is not '
          f'installed ({error.__cause__ or error}): '
          f'{fix.get(backend, "install the driver SQLAlchemy names")}')
