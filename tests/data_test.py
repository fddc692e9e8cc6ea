"""Tests for vaejax.data: the IDX format and load_dataset's sources."""

import functools
import gzip
import http.server
import os
import pathlib
import socket
import threading
import time

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from vaejax import data
from vaejax.data import sources

# Read before the no_real_data_locations fixture points these at empty directories.
REAL_SYSTEM_DATA_ROOT = pathlib.Path(sources.SYSTEM_DATA_ROOT)
REAL_TFDS_DATA_DIR = pathlib.Path(
    os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets').expanduser()
FASHION_MNIST_SPEC = data.KNOWN_DATASETS['fashion_mnist']
NUM_TRAIN, NUM_TEST = 50, 20


# Each test sees only the data it writes (conftest.py).
pytestmark = pytest.mark.usefixtures('no_real_data_locations')


def make_config(**fields) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      'name': 'fashion_mnist',
      'path': None,
      'dir': None,
      'source': 'auto',
      'tfds_data_dir': None,
      'image_size': None,
      'test_fraction': 0.1,
      'validation_size': 0,
      'download_timeout_s': 0.5,
  })
  config.update(fields)
  return config


def random_examples(seed: int) -> dict[str, np.ndarray]:
  """Random images [N, 28, 28] uint8 and labels [N] uint8 for train and test."""
  rng = np.random.default_rng(seed)
  return {
      'train_images': rng.integers(0, 256, (NUM_TRAIN, 28, 28), np.uint8),
      'train_labels': rng.integers(0, 10, NUM_TRAIN, np.uint8),
      'test_images': rng.integers(0, 256, (NUM_TEST, 28, 28), np.uint8),
      'test_labels': rng.integers(0, 10, NUM_TEST, np.uint8),
  }


def write_idx_dataset(
    directory: pathlib.Path, examples: dict[str, np.ndarray],
    compress: bool = True
) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  for part, stem in sources.IDX_FILE_STEMS.items():
    file_name = f'{stem}.gz' if compress else stem
    data.write_idx(directory / file_name, examples[part], compress=compress)
  return directory


class GeneratedFashionMnist(
    tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Writes given arrays as a prepared TFDS `fashion_mnist` (same features)."""

  name = 'fashion_mnist'
  VERSION = tfds.core.Version('3.0.1')

  def __init__(self, *, examples: dict[str, np.ndarray], **kwargs):
    self._examples = examples
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(
                names=FASHION_MNIST_SPEC.class_names),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The examples are given.
    return {
        split: self._generate_examples(self._examples[f'{split}_images'],
                                       self._examples[f'{split}_labels'])
        for split in ('train', 'test')
    }

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      # A PIL image is PNG-encoded by PIL; a numpy one would need TensorFlow.
      yield index, {'image': PIL.Image.fromarray(image), 'label': int(label)}


def write_tfds_dataset(
    data_dir: pathlib.Path, examples: dict[str, np.ndarray]
) -> pathlib.Path:
  builder = GeneratedFashionMnist(
      examples=examples, data_dir=data_dir,
      file_format=tfds.core.FileFormat.ARRAY_RECORD)
  builder.download_and_prepare()
  return data_dir


def example_multiset(split: data.Split) -> list[tuple[bytes, int]]:
  """The split's (image bytes, label) pairs, sorted so order does not matter."""
  return sorted((image.tobytes(), int(label))
                for image, label in zip(split.images, split.labels))


# IDX format.


@pytest.mark.parametrize('compress', [True, False])
@pytest.mark.parametrize('dtype', ['uint8', 'int8', 'int16', 'int32',
                                   'float32', 'float64'])
def test_idx_round_trip(tmp_path, compress, dtype):
  array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
  path = tmp_path / 'array.idx'
  data.write_idx(path, array, compress=compress)
  restored = data.read_idx(path)
  assert restored.dtype == array.dtype
  np.testing.assert_array_equal(restored, array)
  assert path.read_bytes().startswith(b'\x1f\x8b') == compress


def test_write_idx_header_is_standard(tmp_path):
  path = tmp_path / 'labels-idx1-ubyte'
  data.write_idx(path, np.array([3, 1, 4], np.uint8), compress=False)
  assert path.read_bytes() == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 3, 1, 4])
  data.write_idx(path, np.array([[1]], np.int16), compress=False)
  assert path.read_bytes() == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 1,
                                     0, 1])


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
  array = np.arange(6, dtype=np.uint8).reshape(2, 3)
  data.write_idx(tmp_path / 'compressed', array, compress=True)
  data.write_idx(tmp_path / 'plain.gz', array, compress=False)
  np.testing.assert_array_equal(data.read_idx(tmp_path / 'compressed'), array)
  np.testing.assert_array_equal(data.read_idx(tmp_path / 'plain.gz'), array)


def test_truncated_idx_error_names_path_sizes_and_fix(tmp_path):
  path = tmp_path / 'images-idx3-ubyte'
  data.write_idx(path, np.zeros((60, 28, 28), np.uint8), compress=False)
  path.write_bytes(path.read_bytes()[:16 + 1000])
  with pytest.raises(data.DataError) as error:
    data.read_idx(path)
  message = str(error.value)
  assert str(path) in message
  assert 'truncated: header says 60x28x28 uint8 = 47040 bytes' in message
  assert 'file has 1000' in message
  assert 're-download or reinstall' in message


def test_truncated_gzip_stream_is_a_data_error(tmp_path):
  path = tmp_path / 'images-idx3-ubyte.gz'
  data.write_idx(path, np.arange(1000, dtype=np.uint8), compress=True)
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(data.DataError, match='corrupt gzip') as error:
    data.read_idx(path)
  assert str(path) in str(error.value)


@pytest.mark.parametrize('content, problem', [
    (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), 'magic number'),
    (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 7]), 'unsupported IDX dtype code 0x07'),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), 'truncated header'),
    (bytes([0, 0, 8, 1, 0, 0, 0, 1, 7, 7]), 'trailing bytes'),
    (b'\x00\x00', 'not an IDX file'),
    (b'hello, this is a text file\n', 'not an IDX file'),
    (gzip.compress(b'<html>not found</html>', mtime=0), 'not an IDX file'),
], ids=['magic', 'dtype', 'header', 'trailing', 'short', 'text', 'gzip_html'])
def test_malformed_idx_raises_data_error_naming_path(tmp_path, content,
                                                     problem):
  path = tmp_path / 'broken-idx1-ubyte'
  path.write_bytes(content)
  with pytest.raises(data.DataError, match=problem) as error:
    data.read_idx(path)
  assert str(path) in str(error.value)
  assert isinstance(error.value, ValueError)


def test_missing_idx_file_raises_data_error(tmp_path):
  with pytest.raises(data.DataError, match='cannot read'):
    data.read_idx(tmp_path / 'absent')


def test_write_idx_rejects_dtypes_idx_cannot_store(tmp_path):
  with pytest.raises(data.DataError, match='int64'):
    data.write_idx(tmp_path / 'x', np.zeros(3, np.int64))


# load_dataset from IDX files.


@pytest.mark.parametrize('compress', [True, False])
def test_load_dataset_from_idx_files(tmp_path, compress):
  examples = random_examples(seed=0)
  directory = write_idx_dataset(tmp_path / 'idx', examples, compress)
  dataset = data.load_dataset(make_config(dir=str(directory), source='idx'))
  assert dataset.name == 'fashion_mnist'
  assert str(directory) in dataset.source
  assert dataset.image_shape == (28, 28, 1)
  assert dataset.num_classes == 10
  assert dataset.class_names == FASHION_MNIST_SPEC.class_names
  assert dataset.validation is None
  for split, split_name in ((dataset.train, 'train'), (dataset.test, 'test')):
    assert split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(
        split.images, examples[f'{split_name}_images'][..., np.newaxis])
    np.testing.assert_array_equal(split.labels,
                                  examples[f'{split_name}_labels'])


def test_config_dir_takes_precedence_over_env_var(tmp_path, monkeypatch):
  config_dir = write_idx_dataset(tmp_path / 'config', random_examples(0))
  env_dir = write_idx_dataset(tmp_path / 'env', random_examples(1))
  monkeypatch.setenv('VAEJAX_DATA_DIR', str(env_dir))
  assert str(config_dir) in data.load_dataset(
      make_config(dir=str(config_dir))).source
  assert str(env_dir) in data.load_dataset(make_config()).source


@pytest.mark.parametrize('named', ['empty', 'nonexistent'])
def test_config_dir_without_files_is_an_error_not_a_fallback(
    tmp_path, monkeypatch, named):
  """A directory the user names is the only place read (issue 13)."""
  env_dir = write_idx_dataset(tmp_path / 'env', random_examples(1))
  monkeypatch.setenv('VAEJAX_DATA_DIR', str(env_dir))
  write_idx_dataset(tmp_path / 'system_datasets' / 'fashion-mnist',
                    random_examples(2))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(data.DataError) as error:
    data.load_dataset(make_config(dir=str(tmp_path / named)))
  message = str(error.value)
  assert f'data.dir={str(tmp_path / named)!r}' in message
  assert ('missing train-images-idx3-ubyte[.gz]' if named == 'empty'
          else 'is not a directory') in message
  assert 'leave data.dir unset' in message


def test_named_tfds_data_dir_is_the_only_place_read(tmp_path, monkeypatch):
  write_idx_dataset(tmp_path / 'system_datasets' / 'fashion-mnist',
                    random_examples(2))
  (tmp_path / 'empty_tfds').mkdir()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_dataset(make_config(tfds_data_dir=str(tmp_path / 'empty_tfds')))
  assert 'system data directory' not in str(error.value)
  with pytest.raises(data.DataError, match='is not a directory'):
    data.load_dataset(make_config(tfds_data_dir=str(tmp_path / 'nowhere')))
  with pytest.raises(data.DataError, match='both set'):
    data.load_dataset(make_config(dir=str(tmp_path / 'system_datasets'),
                                  tfds_data_dir=str(tmp_path / 'empty_tfds')))


@pytest.mark.parametrize('subdirectory', ['fashion_mnist', 'fashion-mnist'])
def test_env_var_dataset_subdirectory(tmp_path, monkeypatch, subdirectory):
  write_idx_dataset(tmp_path / 'datasets' / subdirectory, random_examples(0))
  monkeypatch.setenv('VAEJAX_DATA_DIR', str(tmp_path / 'datasets'))
  dataset = data.load_dataset(make_config(source='idx'))
  assert str(tmp_path / 'datasets' / subdirectory) in dataset.source


def test_system_data_directory_is_searched_last(tmp_path, monkeypatch):
  system_root = tmp_path / 'system'
  write_idx_dataset(system_root / 'fashion-mnist', random_examples(0))
  monkeypatch.setattr(sources, 'SYSTEM_DATA_ROOT', str(system_root))
  assert str(system_root) in data.load_dataset(make_config()).source
  config_dir = write_idx_dataset(tmp_path / 'config', random_examples(1))
  assert str(config_dir) in data.load_dataset(
      make_config(dir=str(config_dir))).source


def test_directory_with_three_of_four_files_does_not_count(tmp_path):
  directory = write_idx_dataset(tmp_path / 'idx', random_examples(0))
  (directory / 't10k-labels-idx1-ubyte.gz').unlink()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_dataset(make_config(dir=str(directory), source='idx'))
  assert 'missing t10k-labels-idx1-ubyte[.gz]' in str(error.value)


def test_validation_split_is_the_last_training_examples(tmp_path):
  examples = random_examples(seed=0)
  directory = write_idx_dataset(tmp_path / 'idx', examples)
  dataset = data.load_dataset(make_config(dir=str(directory),
                                          validation_size=8))
  images = examples['train_images'][..., np.newaxis]
  np.testing.assert_array_equal(dataset.train.images, images[:-8])
  np.testing.assert_array_equal(dataset.validation.images, images[-8:])
  np.testing.assert_array_equal(dataset.validation.labels,
                                examples['train_labels'][-8:])
  assert len(dataset.train) == NUM_TRAIN - 8
  assert len(dataset.test) == NUM_TEST


@pytest.mark.parametrize('validation_size', [NUM_TRAIN, NUM_TRAIN + 1, -1])
def test_validation_size_must_leave_training_examples(tmp_path,
                                                      validation_size):
  directory = write_idx_dataset(tmp_path / 'idx', random_examples(0))
  with pytest.raises(data.DataError, match='validation_size'):
    data.load_dataset(make_config(dir=str(directory),
                                  validation_size=validation_size))


def test_unknown_dataset_name_lists_known_names():
  with pytest.raises(data.DataError,
                     match="npz, image_folder, fashion_mnist, mnist nor a "
                           "TFDS data set. Did you mean 'cifar10'"):
    data.load_dataset(make_config(name='cifar10x'))


def test_unknown_source_lists_known_sources():
  with pytest.raises(data.DataError, match='auto, idx, tfds'):
    data.load_dataset(make_config(source='http'))


def test_labels_out_of_range_raise_data_error(tmp_path):
  examples = random_examples(seed=0)
  examples['test_labels'][3] = 10
  directory = write_idx_dataset(tmp_path / 'idx', examples)
  with pytest.raises(data.DataError, match=r'labels range over \[\d+, 10\]'
                     ) as error:
    data.load_dataset(make_config(dir=str(directory)))
  assert 't10k-labels-idx1-ubyte.gz' in str(error.value)


def test_image_shape_mismatch_raises_data_error(tmp_path):
  examples = random_examples(seed=0)
  examples['train_images'] = np.zeros((NUM_TRAIN, 32, 32), np.uint8)
  directory = write_idx_dataset(tmp_path / 'idx', examples)
  with pytest.raises(data.DataError, match=r'shape \[N, 28, 28, 1\]'):
    data.load_dataset(make_config(dir=str(directory)))


def test_image_and_label_counts_must_match(tmp_path):
  examples = random_examples(seed=0)
  examples['train_labels'] = examples['train_labels'][:-1]
  directory = write_idx_dataset(tmp_path / 'idx', examples)
  with pytest.raises(data.DataError, match='50 images but 49 labels'):
    data.load_dataset(make_config(dir=str(directory)))


# Missing data and the download probe.


def test_missing_data_fails_fast_listing_what_was_tried(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_dataset(make_config())
  assert time.monotonic() - start < 5
  message = str(error.value)
  assert isinstance(error.value, data.DataError)
  for expected in [
      'IDX files in $VAEJAX_DATA_DIR: not set',
      str(tmp_path / 'system_datasets' / 'fashion-mnist'),
      f'TFDS copy in {tmp_path / "default_tfds" / "fashion_mnist"}: not '
      'prepared',
      'TFDS download',
      'apt-get install -y dataset-fashion-mnist',
      '--config.data.dir=DIR',
      'VAEJAX_DATA_DIR=DIR',
      "pip install 'vaejax[tfds-prepare]'",
      'tfds build fashion_mnist',
  ]:
    assert expected in message


def test_download_is_not_attempted_when_host_does_not_answer(tmp_path,
                                                             monkeypatch):
  probed = []

  def unreachable(url, timeout_s):
    probed.append((url, timeout_s))
    return False

  monkeypatch.setattr(sources, 'tensorflow_installed', lambda: True)
  monkeypatch.setattr(sources, 'can_download', unreachable)
  (tmp_path / 'tfds').mkdir()
  with pytest.raises(data.DataNotFoundError, match='within 0.5 s'):
    data.load_dataset(make_config(source='tfds',
                                  tfds_data_dir=str(tmp_path / 'tfds')))
  probe_url = FASHION_MNIST_SPEC.download_url + 'train-labels-idx1-ubyte.gz'
  assert probed == [(probe_url, 0.5)]
  assert not list((tmp_path / 'tfds').iterdir())


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    del args  # Keeps test output clean.


@pytest.fixture
def local_http_url(tmp_path):
  """URL of a local HTTP server serving tmp_path/served."""
  served_dir = tmp_path / 'served'
  served_dir.mkdir()
  handler = functools.partial(QuietFileHandler, directory=str(served_dir))
  with http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler) as server:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}/', served_dir
    server.shutdown()


def test_can_download_file_from_answering_server(local_http_url):
  url, served_dir = local_http_url
  (served_dir / 'train-labels-idx1-ubyte.gz').write_bytes(b'labels')
  assert sources.can_download(url + 'train-labels-idx1-ubyte.gz', timeout_s=2)


def test_can_download_is_false_for_http_error(local_http_url):
  url, _ = local_http_url
  assert not sources.can_download(url + 'absent.gz', timeout_s=2)


def test_can_download_is_false_quickly_for_closed_port():
  with socket.socket() as bound_not_listening:
    bound_not_listening.bind(('127.0.0.1', 0))
    port = bound_not_listening.getsockname()[1]
    start = time.monotonic()
    assert not sources.can_download(f'http://127.0.0.1:{port}/x.gz',
                                    timeout_s=2)
  assert time.monotonic() - start < 1


@pytest.mark.parametrize('url', ['http://10.255.255.1/x.gz',
                                 'https://vaejax-no-such-host.invalid/x.gz'])
def test_can_download_gives_up_within_timeout(url):
  start = time.monotonic()
  assert not sources.can_download(url, timeout_s=0.3)
  assert time.monotonic() - start < 1


# TFDS source.


def test_idx_and_tfds_sources_give_the_same_examples(tmp_path):
  examples = random_examples(seed=0)
  idx_dir = write_idx_dataset(tmp_path / 'idx', examples)
  tfds_dir = write_tfds_dataset(tmp_path / 'tfds', examples)
  from_idx = data.load_dataset(make_config(dir=str(idx_dir), source='idx'))
  from_tfds = data.load_dataset(make_config(tfds_data_dir=str(tfds_dir),
                                            source='tfds'))
  assert 'array_record' in from_tfds.source
  for split in ('train', 'test'):
    tfds_split = getattr(from_tfds, split)
    assert tfds_split.images.shape == getattr(from_idx, split).images.shape
    assert tfds_split.images.dtype == np.uint8
    assert tfds_split.labels.dtype == np.int32
    assert (example_multiset(tfds_split)
            == example_multiset(getattr(from_idx, split)))


def test_auto_uses_tfds_when_no_idx_files(tmp_path):
  examples = random_examples(seed=0)
  tfds_dir = write_tfds_dataset(tmp_path / 'tfds', examples)
  dataset = data.load_dataset(make_config(tfds_data_dir=str(tfds_dir),
                                          validation_size=10))
  assert str(tfds_dir) in dataset.source
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (
      NUM_TRAIN - 10, 10, NUM_TEST)


def test_tfds_data_dir_defaults_to_env_var(tmp_path, monkeypatch):
  write_tfds_dataset(tmp_path / 'env_tfds', random_examples(seed=0))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'env_tfds'))
  dataset = data.load_dataset(make_config(source='tfds'))
  assert str(tmp_path / 'env_tfds') in dataset.source


# The real Fashion-MNIST, where this machine has it.

real_fashion_mnist_dir = REAL_SYSTEM_DATA_ROOT / 'fashion-mnist'
needs_real_fashion_mnist = pytest.mark.skipif(
    not real_fashion_mnist_dir.is_dir(),
    reason=f'{real_fashion_mnist_dir} absent '
           '(apt-get install -y dataset-fashion-mnist)')


@needs_real_fashion_mnist
def test_real_fashion_mnist_loads(monkeypatch):
  monkeypatch.setattr(sources, 'SYSTEM_DATA_ROOT', str(REAL_SYSTEM_DATA_ROOT))
  dataset = data.load_dataset(make_config(source='idx'))
  assert str(real_fashion_mnist_dir) in dataset.source
  assert dataset.train.images.shape == (60000, 28, 28, 1)
  assert dataset.test.images.shape == (10000, 28, 28, 1)
  # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
  np.testing.assert_array_equal(np.bincount(dataset.train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test.labels), [1000] * 10)


@needs_real_fashion_mnist
@pytest.mark.skipif(
    not list((REAL_TFDS_DATA_DIR / 'fashion_mnist').glob(
        '*/dataset_info.json')),
    reason=f'no prepared TFDS fashion_mnist in {REAL_TFDS_DATA_DIR}')
def test_real_fashion_mnist_test_split_matches_prepared_tfds_copy(
    monkeypatch):
  # The test split only: decoding all 70000 PNGs would take ~25 s.
  monkeypatch.setattr(sources, 'SYSTEM_DATA_ROOT', str(REAL_SYSTEM_DATA_ROOT))
  from_idx = data.load_dataset(make_config(source='idx'))
  tfds_test = tfds.data_source('fashion_mnist', split='test',
                               data_dir=REAL_TFDS_DATA_DIR)
  examples = tfds_test.__getitems__(list(range(len(tfds_test))))
  from_tfds = data.Split(
      images=np.stack([example['image'] for example in examples]),
      labels=np.array([example['label'] for example in examples]))
  assert example_multiset(from_tfds) == example_multiset(from_idx.test)
