"""The quick-start notebook runs from top to bottom."""

import pathlib

import pytest

pytestmark = pytest.mark.slow  # executes the whole notebook in a kernel

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK = pathlib.Path(__file__).parent.parent / 'notebooks' / 'quickstart.ipynb'


def test_quickstart_notebook_runs(digits_dir, monkeypatch):
  monkeypatch.setenv('PXP_JAX_DATA_DIR', digits_dir)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  client.execute()  # raises CellExecutionError if a cell fails
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code'
             for o in cell.get('outputs', [])]
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'A_PR' in text and 'lrp' in text
  assert sum('image/png' in o.get('data', {}) for o in outputs) >= 2
