"""The family contract: what a model family can do, asked by name.

Every entry of `models.MODELS` builds a `Family`: the flax module that the
train loop and the objective use (`family.model`) and the abilities the
evaluations and figures ask for. Evaluators never look at a model's type;
they name the abilities they need (`Evaluation.requires` in
`vaejax.evaluators`), and an ability a family lacks skips them with the
family's one-line reason, at start-up of the evaluation rather than as an
exception at the end of a long run.

The abilities (pure functions of the model's variables; `x` is a batch of
model inputs [B, ...] as the data transform gives them, `keys` one PRNG key
per example, so results never depend on how a batch is split over devices):

  represent(variables, x) -> [B, D] float
      The features that a linear probe, a clustering or a Fréchet distance
      uses: VAE posterior means, autoencoder codes, (later) MAE encoder
      tokens pooled, VQ code embeddings.
  reconstruct(variables, x, keys) -> [B, H, W, C] in data space
      What the model makes of x (for a VAE the likelihood's mean at the
      posterior mean).
  reconstruction_nll(variables, x, keys) -> [B]
      -log p(x | z = the reconstruction's code), in nats per example.
  sample(variables, key, num) -> [num, H, W, C]
      Draws from the model's prior, decoded (a generative family; a prior of
      any shape: several latent groups, a categorical grid from a learned
      prior).
  log_likelihood_bound(variables, x, keys, num_samples, chunk_size) -> [B]
      A lower bound on (or estimate of) log p(x) in nats: the IWAE estimate
      with k = num_samples for a VAE.
  encode(variables, x) -> [B, d] and decode(variables, z [N, d]) -> images
      A continuous code and its decoded image in data space: interpolations
      and traversals walk this space.
  posterior_kl_per_dim(variables, x) -> [B, d]
      KL(q(z_j | x) || p(z_j)) per latent dimension (a factorised posterior
      and prior): KL diagnostics and active units.
  prior_grid(num_per_axis) -> [num_per_axis**2, 2]
      For a 2-D latent with a factorised continuous prior: codes on a grid
      of the prior's quantiles (the decoded manifold).
  code_grid(variables, x) -> [B, h, w] int
      A discrete latent's codes: the VQ-VAE's nearest codebook indices (the
      data of a prior over codes, `vaejax.stages` 'vq_codes').
  decode_code_grid(variables, codes [N, h, w]) -> images in data space
      Code grids decoded (by the first stage's decoder, for a prior).
  code_log_prob(variables, codes [B, h, w], labels [B] or None) -> [B]
      log p(codes) under a learned prior over code grids, in nats.
  assign_clusters(variables, features) -> [B] int
  positive_probability(variables, features) -> [B]
      Mixture families: the most responsible component; P(Y=1 | x).
  classify(variables, x) -> [B, K] float
      Class logits of a classifier (`vaejax.models.classifier`), whose
      `represent` is its penultimate layer.

A family implements the abilities it has as methods and names the others
in `lacking`, with the reason: {'sample': 'a deterministic autoencoder has
no prior to sample from'}. See README "Adding a model".
"""
from typing import Any, Mapping

import flax.linen as nn

ABILITIES = (
    'represent', 'reconstruct', 'reconstruction_nll', 'sample',
    'log_likelihood_bound', 'encode', 'decode', 'posterior_kl_per_dim',
    'prior_grid', 'code_grid', 'decode_code_grid', 'code_log_prob',
    'assign_clusters', 'positive_probability', 'classify',
)


class Family:
  """A built model (`model`, its likelihood) and the abilities it has.

  Subclasses implement abilities as methods of the names in ABILITIES and
  override `lacking(ability)` (or the LACKING mapping) for those they do not
  have; an ability neither implemented nor explained is a programming error
  that `check_abilities` reports.
  """
  # Ability -> why this family lacks it (one line, shown in the log).
  LACKING: Mapping[str, str] = {}

  def __init__(self, model: nn.Module, likelihood: Any, name: str):
    self.model = model
    self.likelihood = likelihood
    self.name = name
    # `vaejax.stages.FirstStage` of a second stage (set by
    # `experiment.build_experiment`), else None.
    self.first_stage = None

  def lacking(self, ability: str) -> str | None:
    """None if the family has `ability`, else the reason it does not."""
    if ability not in ABILITIES:
      raise ValueError(f'Unknown ability {ability!r}; the contract has '
                       f'{", ".join(ABILITIES)}.')
    if ability in self.LACKING:
      return self.LACKING[ability]
    return None

  def has(self, ability: str) -> bool:
    return self.lacking(ability) is None

  def reconstruction_rows(self, variables, x, keys):
    """Labelled rows of the reconstructions figure, each [B, H, W, C]:
    input and `reconstruct` (a family may show more, e.g. the masked input
    of a masked autoencoder)."""
    return {'input': x, 'reconstruction': self.reconstruct(variables, x, keys)}

  def missing(self, abilities) -> str | None:
    """The first reason why one of `abilities` is lacking, or None."""
    for ability in abilities:
      reason = self.lacking(ability)
      if reason is not None:
        return f'{self.name} cannot {ability}: {reason}'
    return None


def check_abilities(family: Family) -> None:
  """Every ability is a method of `family` or explained as lacking.

  (An implemented ability may still be lacking for some settings, e.g. the
  2-D manifold of a VAE whose latent is not 2-D.)
  """
  for ability in ABILITIES:
    implemented = callable(getattr(type(family), ability, None))
    if not implemented and family.lacking(ability) is None:
      raise TypeError(f'{type(family).__name__}: ability {ability!r} is '
                      f'neither implemented nor listed as lacking.')
