"""The data sets vaejax knows by name: where their files live, their shape
and classes (`KNOWN_DATASETS`), read by `vaejax.data.sources`."""
import dataclasses

from vaejax.data.idx import DataError


IDX_FILE_STEMS = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}


class DataNotFoundError(DataError):
  """No source has the requested data set; the message lists what was tried."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What vaejax knows about a data set before loading it."""
  tfds_name: str
  system_dir_name: str
  debian_package: str | None
  download_url: str
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


KNOWN_DATASETS = {
    'fashion_mnist': DatasetSpec(
        tfds_name='fashion_mnist',
        system_dir_name='fashion-mnist',
        debian_package='dataset-fashion-mnist',
        download_url=('http://fashion-mnist.s3-website.eu-central-1'
                      '.amazonaws.com/'),
        image_shape=(28, 28, 1),
        class_names=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                     'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
    ),
    'mnist': DatasetSpec(
        tfds_name='mnist',
        system_dir_name='mnist',
        debian_package=None,
        download_url='https://storage.googleapis.com/cvdf-datasets/mnist/',
        image_shape=(28, 28, 1),
        class_names=tuple(str(digit) for digit in range(10)),
    ),
}
