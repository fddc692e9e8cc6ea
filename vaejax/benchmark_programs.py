"""Train programs that the benchmark builds directly, outside the registries.

Each builder takes the benchmark's experiment (for the device-resident
training set, batch size and seed) and a conv_impl, and returns
(train_chunk, state), train_chunk having the signature of
`train.make_train_chunk(exp)`'s function: (state, images, labels, indices
[steps, batch]) -> (state, {'loss': [steps]}). All of them train with Adam
1e-3 on Fashion-MNIST-shaped images, one PRNG key per step.

  handwritten_vae      the 784-400-20 VAE in plain JAX: vaejax's loop's cost
  pixelcnn_7x7         a gated PixelCNN prior over a 7x7 grid of 128 codes
                       (the code grid of a VQ-VAE with two stride-2 layers;
                       here each 4x4 block's mean intensity in 128 bins)
  pixelcnn_28x28       a gated PixelCNN over binarised 28x28 pixels (K = 2)
  vqvae                a VQ-VAE step: the conv VAE's trunk to a 7x7 grid of
                       16-dim vectors, 128 codes, Bernoulli decoder,
                       codebook + 0.25 * commitment
  hierarchical         three conv top-down blocks at 14x14 (width 64,
                       bottleneck 16, 8 latent channels) between a stride-2
                       bottom-up conv and a transposed-conv output
The networks are vaejax.models' own (pixelcnn, vector_quantizer,
hierarchical, convolutions); the objectives of these families do not
exist yet, so the losses are written here.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from vaejax.models import convolutions
from vaejax.models import hierarchical
from vaejax.models import pixelcnn
from vaejax.models import vector_quantizer


def _adam_chunk(loss_fn, params, seed):
  """(jitted chunk, state) for `loss_fn(params, images uint8 [B, ...], key)`."""
  optimizer = optax.adam(1e-3)
  state = {'params': params, 'opt_state': optimizer.init(params),
           'step': jnp.int32(0)}
  root_key = jax.random.key(seed)

  def chunk(state, images, labels, indices):
    del labels

    def step(state, step_indices):
      key = jax.random.fold_in(root_key, state['step'])
      loss, grads = jax.value_and_grad(loss_fn)(
          state['params'], images[step_indices], key)
      updates, opt_state = optimizer.update(grads, state['opt_state'])
      return {'params': optax.apply_updates(state['params'], updates),
              'opt_state': opt_state, 'step': state['step'] + 1}, loss

    state, losses = lax.scan(step, state, indices)
    return state, {'loss': losses}

  return jax.jit(chunk, donate_argnums=(0,)), state


def _binarize(key, images):
  """Dynamic binarisation: x ~ Bernoulli(pixel / 255), float32."""
  return jax.random.bernoulli(key, images.astype(jnp.float32) / 255).astype(
      jnp.float32)


def _bernoulli_nll(logits, x):
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x),
                 axis=tuple(range(1, x.ndim)))


def _example_images(exp):
  return jnp.zeros((exp.config.batch_size, *exp.dataset.image_shape),
                   jnp.uint8)


def handwritten_vae(exp, conv_impl=None):
  """The pytorch/examples VAE (784-400-20, Bernoulli, Adam 1e-3) in plain JAX.

  A baseline for vaejax's own loop: dense layers as jnp matmuls, the loss
  as the only metric, no sharding (`conv_impl` is unused: no convolutions).
  """
  del conv_impl
  pixels = int(np.prod(exp.dataset.image_shape))
  hidden, latent = 400, 20
  layers = {'encoder': (pixels, hidden), 'mean': (hidden, latent),
            'logvar': (hidden, latent), 'decoder': (latent, hidden),
            'output': (hidden, pixels)}
  keys = jax.random.split(jax.random.key(exp.config.seed), len(layers))
  params = {
      name: {'w': jax.random.normal(key, size) / np.sqrt(size[0]),
             'b': jnp.zeros(size[1])}
      for key, (name, size) in zip(keys, layers.items())}

  def dense(params, name, x):
    return x @ params[name]['w'] + params[name]['b']

  def loss_fn(params, images, key):
    binarize_key, noise_key = jax.random.split(key)
    x = _binarize(binarize_key, images.reshape(-1, pixels))
    h = jax.nn.relu(dense(params, 'encoder', x))
    mean, logvar = dense(params, 'mean', h), dense(params, 'logvar', h)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(noise_key,
                                                         mean.shape)
    logits = dense(params, 'output', jax.nn.relu(dense(params, 'decoder', z)))
    kl = -0.5 * jnp.sum(1 + logvar - mean ** 2 - jnp.exp(logvar), -1)
    return jnp.mean(_bernoulli_nll(logits, x) + kl)

  return _adam_chunk(loss_fn, params, exp.config.seed)


def _pixelcnn_program(exp, conv_impl, codes_of, num_codes, **network):
  model = pixelcnn.GatedPixelCNN(num_codes, conv_impl=conv_impl, **network)
  example = codes_of(jax.random.key(0), _example_images(exp))
  params = model.init(jax.random.key(exp.config.seed), example)['params']

  def loss_fn(params, images, key):
    codes = codes_of(key, images)
    logits = model.apply({'params': params}, codes)
    return jnp.mean(jnp.sum(
        optax.softmax_cross_entropy_with_integer_labels(logits, codes),
        axis=(1, 2)))

  return _adam_chunk(loss_fn, params, exp.config.seed)


def pixelcnn_7x7(exp, conv_impl='auto'):
  num_codes = 128

  def block_codes(key, images):
    del key
    blocks = images[..., 0].astype(jnp.int32).reshape(
        images.shape[0], 7, 4, 7, 4).sum(axis=(2, 4))
    return blocks * num_codes // (16 * 256)

  return _pixelcnn_program(exp, conv_impl, block_codes, num_codes,
                           features=32, num_layers=6, first_kernel_size=7,
                           output_features=128)


def pixelcnn_28x28(exp, conv_impl='auto'):
  def binarised_pixels(key, images):
    return _binarize(key, images[..., 0]).astype(jnp.int32)

  return _pixelcnn_program(exp, conv_impl, binarised_pixels, 2, features=32,
                           num_layers=4, first_kernel_size=7,
                           output_features=64)


class _VQVAE(nn.Module):
  conv_impl: str
  num_codes: int = 128
  code_dim: int = 16

  @nn.compact
  def __call__(self, x):
    h = x
    for i, c in enumerate((32, 64)):
      h = nn.gelu(convolutions.conv(c, (3, 3), (2, 2), self.conv_impl,
                                    name=f'conv_{i}')(h))
    z_e = convolutions.conv(self.code_dim, (1, 1), impl=self.conv_impl,
                            name='to_code')(h)
    quantized = vector_quantizer.VectorQuantizer(
        self.num_codes, self.code_dim, name='quantizer')(z_e)
    h = nn.gelu(convolutions.conv(64, (1, 1), impl=self.conv_impl,
                                  name='from_code')(quantized['quantized']))
    for i, c in enumerate((64, 32)):
      h = nn.gelu(convolutions.conv_transpose(c, (3, 3), (2, 2),
                                              self.conv_impl,
                                              name=f'deconv_{i}')(h))
    logits = convolutions.conv(1, (3, 3), impl=self.conv_impl,
                               name='output')(h)
    return logits, z_e, quantized['codebook_vectors']


def vqvae(exp, conv_impl='auto'):
  model = _VQVAE(conv_impl)
  params = model.init(jax.random.key(exp.config.seed),
                      _example_images(exp).astype(jnp.float32))['params']

  def loss_fn(params, images, key):
    x = _binarize(key, images)
    logits, z_e, z_q = model.apply({'params': params}, x)
    terms = (vector_quantizer.codebook_loss(z_e, z_q)
             + 0.25 * vector_quantizer.commitment_loss(z_e, z_q))
    return jnp.mean(_bernoulli_nll(logits, x) + jnp.sum(terms, axis=(1, 2)))

  return _adam_chunk(loss_fn, params, exp.config.seed)


class _TopDownStack(nn.Module):
  conv_impl: str
  width: int = 64
  num_blocks: int = 3

  @nn.compact
  def __call__(self, x, key):
    bottom_up = nn.gelu(convolutions.conv(self.width, (3, 3), (2, 2),
                                          self.conv_impl, name='bottom_up')(x))
    h = jnp.zeros_like(bottom_up)
    kl_total = 0.0
    for i, block_key in enumerate(jax.random.split(key, self.num_blocks)):
      h, kl, _ = hierarchical.TopDownBlock(
          self.width, self.width // 4, 8, 1 / np.sqrt(self.num_blocks),
          conv_impl=self.conv_impl, name=f'top_down_{i}')(h, bottom_up,
                                                           block_key)
      kl_total = kl_total + jnp.sum(kl, axis=(1, 2, 3))
    logits = convolutions.conv_transpose(1, (3, 3), (2, 2), self.conv_impl,
                                         name='output')(nn.gelu(h))
    return logits, kl_total


def hierarchical_top_down(exp, conv_impl='auto'):
  model = _TopDownStack(conv_impl)
  params = model.init(jax.random.key(exp.config.seed),
                      _example_images(exp).astype(jnp.float32),
                      jax.random.key(0))['params']

  def loss_fn(params, images, key):
    binarize_key, sample_key = jax.random.split(key)
    x = _binarize(binarize_key, images)
    logits, kl = model.apply({'params': params}, x, sample_key)
    return jnp.mean(_bernoulli_nll(logits, x) + kl)

  return _adam_chunk(loss_fn, params, exp.config.seed)
