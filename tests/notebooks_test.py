"""Every notebook in colab/ runs headless, top to bottom, without errors."""

import nbclient
import nbformat
import pytest

from conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / 'colab').glob('*.ipynb'))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch, tiny_data_dir):
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs, f'{path.name}: commit notebooks with outputs stripped'
  # The kernel inherits this environment: a small generated data set (so the
  # test does not depend on the machine's copy of Fashion-MNIST) and a workdir.
  monkeypatch.setenv('VAEJAX_DATA_DIR', tiny_data_dir)
  monkeypatch.setenv('VAEJAX_NOTEBOOK_WORKDIR', str(tmp_path))
  monkeypatch.setenv('VAEJAX_NOTEBOOK_STEPS', '10')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(path.parent)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code'
             for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  assert any(o.output_type == 'display_data' and 'image/png' in o.data
             for o in outputs), 'the notebook should show its image grids'
