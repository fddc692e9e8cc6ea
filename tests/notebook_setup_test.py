"""The notebooks' setup cell: the runtime it detects and the commands it runs
on Colab (GPU, CPU), without running them; and the Colab metadata."""
import importlib.util
import os
import shutil
import sys

import nbformat
import pytest

from conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / 'colab').glob('*.ipynb'))


def setup_cell(path):
  return nbformat.read(path, as_version=4).cells[1].source


def test_every_notebook_has_the_same_setup_cell_and_colab_gpu_metadata():
  assert len({setup_cell(path) for path in NOTEBOOKS}) == 1
  for path in NOTEBOOKS:
    metadata = nbformat.read(path, as_version=4).metadata
    assert metadata['accelerator'] == 'GPU', path.name
    assert metadata['colab']['gpuType'] == 'T4', path.name


@pytest.fixture
def cell(monkeypatch, tmp_path):
  """The setup cell's functions, its shell commands recorded instead of run.

  Executing the cell here takes its local path (vaejax is installed, no
  google.colab): nothing is installed and JAX's devices are checked.
  """
  namespace = {}
  exec(setup_cell(NOTEBOOKS[0]), namespace)  # pylint: disable=exec-used
  assert namespace['RUNTIME'] == 'local'
  commands, failing = [], set()

  def run(command):
    commands.append(command)
    return not any(word in command for word in failing)

  namespace.update(run=run, commands=commands, failing=failing,
                   FASHION_MNIST_DIR=str(tmp_path / 'no_fashion_mnist'),
                   COLAB_CHECKOUT=str(tmp_path / 'checkout'))
  monkeypatch.setattr(os, 'chdir', lambda path: None)
  monkeypatch.setattr(sys, 'path', list(sys.path))
  return namespace


def test_runtime_detection(cell, monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: (
      object() if name == 'google.colab' else real_find_spec(name)))
  monkeypatch.setattr(shutil, 'which', lambda name: None)
  assert cell['detect_runtime']() == 'colab-cpu'
  monkeypatch.setattr(shutil, 'which', lambda name: f'/usr/bin/{name}')
  assert cell['detect_runtime']() == 'colab-gpu'
  cell['failing'].add('nvidia-smi')  # Installed, but no GPU attached.
  assert cell['detect_runtime']() == 'colab-cpu'


@pytest.mark.parametrize('runtime, extra', [('colab-gpu', '[cuda]'),
                                            ('colab-cpu', '')])
def test_colab_install_uses_the_runtimes_extra_and_updates_apt_first(
    cell, runtime, extra):
  cell['install_on_colab'](runtime)
  commands = cell['commands']
  pip = [c for c in commands if 'pip install' in c]
  assert pip == [f"{sys.executable} -m pip install -q -e "
                 f"'{cell['COLAB_CHECKOUT']}{extra}'"]
  assert commands.index('apt-get update -qq') < commands.index(
      'apt-get install -y -qq dataset-fashion-mnist')
  assert not [c for c in commands if 'tensorflow_datasets' in c]


@pytest.mark.parametrize('failing', ['apt-get update', 'apt-get install'])
def test_missing_debian_package_falls_back_to_tfds(cell, failing):
  cell['failing'].add(failing)
  cell['install_on_colab']('colab-cpu')
  commands = cell['commands']
  assert 'download_and_prepare()' in commands[-1]
  # A failed update means no package lists: installing is not tried.
  assert ('apt-get install -y -qq dataset-fashion-mnist' in commands) == (
      failing == 'apt-get install')


def test_no_data_at_all_is_an_error_saying_what_to_do(cell):
  cell['failing'].update({'apt-get install', 'tensorflow_datasets'})
  with pytest.raises(RuntimeError, match='check the network'):
    cell['install_on_colab']('colab-cpu')


def test_gpu_runtime_without_a_gpu_device_is_an_error(cell):
  with pytest.raises(RuntimeError, match='Restart session'):
    cell['check_devices']('colab-gpu')  # The test machine has only a CPU.
