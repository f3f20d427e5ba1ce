"""The training state pytree, the GAN a config describes, and the pure, jittable D and G
update steps.

Shape letters in names across the project (x_BxSxSxC): B batch, K iterations of one
dispatch, N (and M) the size of a set of images (a dataset, every image of an evaluation),
Z latent size (config.nz), S image side, H and W height and width, C channels, I and O a
convolution's input and output channels, F features, T interpolation frames.

One iteration is `d_step` then `g_step`, as in the PyTorch tutorial. Both draw
the same noise z (keyed by the step counter), so the G step sees exactly the
fake batch the D step trained on.

BatchNorm statistics, as in the tutorial's loop:
- Every training forward pass normalises with batch statistics.
- D's running averages are updated by each of D's forward passes in the order
  the tutorial runs them: the D step's real then fake batch, then the G step's
  pass over the fake batch (PyTorch's in-place updates do the same; so do the
  spectral-norm vectors, which advance on every training pass).
- G's running averages are updated once per iteration, by the G step.
Training never reads running averages; they are what eval-mode sampling and an
exported netD/netG use, and they evolve as PyTorch's would.
"""

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dcgan_jax import augment, losses, optim, parallel
from dcgan_jax.models import Discriminator, Generator

PyTree = Any
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """All training state: both networks, both optimizers, the step and the RNG."""
  step: jax.Array  # int32 scalar: completed iterations (D step + G step)
  rng: jax.Array  # uint32[2] base key; the key of step s is fold_in(rng, s)
  g_params: PyTree
  g_batch_stats: PyTree
  g_opt_state: PyTree
  d_params: PyTree
  d_batch_stats: PyTree
  d_opt_state: PyTree
  g_ema_params: PyTree = None  # exponential moving average of g_params; None when it is off


@dataclasses.dataclass(frozen=True)
class Adam:
  """Adam's hyperparameters; equal settings hash equal, so jit caches are shared."""
  learning_rate: float = 2e-4
  b1: float = 0.5
  b2: float = 0.999
  eps: float = 1e-8

  @property
  def tx(self) -> optax.GradientTransformation:
    return optim.adam(self.learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class GAN:
  """The static parts of training (modules, optimizers, loss settings): a value,
  hashable, passed to the jitted steps as a static argument."""
  generator: Generator
  discriminator: Discriminator
  g_opt: Adam
  d_opt: Adam
  nz: int
  label_smoothing: float = 0.0
  g_ema_decay: float = 0.0  # > 0: keep g_ema_params, updated after every G step
  batch_sharding: Any = None  # a jax.sharding.Sharding of (B, ...) arrays: the data mesh
  loss: str = "bce"  # one of losses.LOSSES
  gp_weight: float = 0.0  # WGAN-GP's lambda (loss 'wgan_gp')
  r1_weight: float = 0.0  # R1's gamma: gamma / 2 * E ||grad D(x)||^2 on real images
  d_steps: int = 1  # D updates per G update, each on its own real batch
  augment: tuple[str, ...] = ()  # DiffAugment policies (augment.POLICIES) of D's inputs
  d_frozen: int = 0  # D's first d_frozen blocks keep their weights (FreezeD)

  @property
  def has_penalty(self) -> bool:
    return self.r1_weight > 0 or self.loss == "wgan_gp"

  @property
  def num_classes(self) -> int:
    """The classes G and D are conditional on; 0: unconditional."""
    return self.generator.num_classes


def gan_from_config(config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh | None = None, num_classes: int = 0) -> GAN:
  """Builds the models, optimizers and loss settings of a config; with a mesh, training
  batches are split over its data axis; num_classes > 0: G and D conditional on that many
  classes (a conditional config's data tells how many)."""
  return GAN(
      generator=Generator(config.image_size, config.channels, config.ngf, config.upconv_impl,
                          config.compute_dtype, num_classes),
      discriminator=Discriminator(config.image_size, config.ndf, config.downconv_impl,
                                  config.compute_dtype, d_norm(config), config.spectral_norm,
                                  num_classes),
      g_opt=Adam(config.g_learning_rate, config.adam_b1, config.adam_b2, config.adam_eps),
      d_opt=Adam(config.d_learning_rate, config.adam_b1, config.adam_b2, config.adam_eps),
      nz=config.nz, label_smoothing=config.label_smoothing, g_ema_decay=config.g_ema_decay,
      batch_sharding=parallel.batch_sharding(mesh) if mesh is not None else None,
      loss=config.loss, gp_weight=config.gp_weight if config.loss == "wgan_gp" else 0.0,
      r1_weight=config.r1_weight, d_steps=config.d_steps_per_g_step,
      augment=augment.parse(config.diffaugment), d_frozen=config.freeze_d_layers)


def d_norm(config: ml_collections.ConfigDict) -> str:
  """Returns D's normalisation: config.d_norm, where 'auto' is 'layer' for WGAN-GP (its penalty
  needs a critic without BatchNorm) and the tutorial's 'batch' otherwise."""
  if config.d_norm != "auto":
    return config.d_norm
  return "layer" if config.loss == "wgan_gp" else "batch"


def create_train_state(gan: GAN, rng: jax.Array) -> TrainState:
  """Initialises both networks with DCGAN init and both optimizers' states."""
  g_key, d_key, state_key = jax.random.split(rng, 3)
  size = gan.generator.image_size
  labels = jnp.zeros((2,), jnp.int32) if gan.num_classes else None
  g_vars = gan.generator.init(g_key, jnp.zeros((2, gan.nz)), train=False, labels_B=labels)
  d_vars = gan.discriminator.init(
      d_key, jnp.zeros((2, size, size, gan.generator.channels)), train=False, labels_B=labels)
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=state_key,
      g_params=g_vars["params"], g_batch_stats=g_vars["batch_stats"],
      g_opt_state=gan.g_opt.tx.init(g_vars["params"]),
      d_params=d_vars["params"], d_batch_stats=d_vars.get("batch_stats", {}),
      d_opt_state=gan.d_opt.tx.init(d_vars["params"]),
      g_ema_params=g_vars["params"] if gan.g_ema_decay > 0 else None)


def _init_program(sharding: jax.sharding.Sharding | None):
  """create_train_state compiled as one program (eager init compiles every op), its arrays
  placed with `sharding`."""
  return jax.jit(create_train_state, static_argnums=0, out_shardings=sharding)


def init_train_state(gan: GAN, seed: int,
                     sharding: jax.sharding.Sharding | None = None) -> TrainState:
  """Runs create_train_state compiled as one program, its arrays placed with `sharding` (e.g.
  replicated over every process's devices)."""
  return _init_program(sharding)(gan, jax.random.PRNGKey(seed))


def compile_init(gan: GAN, sharding: jax.sharding.Sharding | None = None) -> None:
  """Compiles init_train_state's program for gan and sharding (any seed) without running it:
  init_train_state then runs it at once."""
  _init_program(sharding).lower(gan, jax.random.PRNGKey(0)).compile()


def abstract_train_state(gan: GAN) -> TrainState:
  """Returns the shapes and dtypes of a TrainState, computed without running anything."""
  return jax.eval_shape(functools.partial(create_train_state, gan), jax.random.PRNGKey(0))


def _step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(state.rng, state.step)


# What an iteration draws besides its noise, each from the step's key folded with a constant:
# the noise of D update j of d_steps (j < d_steps - 1: the last D update and the G update share
# step_noise), D update j's augmentation and interpolation, the G update's augmentation.
_EARLIER_NOISE, _D_KEYS, _G_AUGMENT = 1, 1000, 2000
MAX_D_STEPS = 100  # keeps the constants' ranges apart


def step_noise(gan: GAN, state: TrainState, batch_size: int) -> jax.Array:
  """Draws the latent batch z (B, Z) of the state's current step, N(0, 1), float32 (also under
  jax_enable_x64), split over the data mesh where there is one (each device runs G on its part of
  the batch)."""
  key = _step_key(state)
  return _split_batch(gan, jax.random.normal(key, (batch_size, gan.nz), jnp.float32))


def _split_batch(gan: GAN, x_Bx: jax.Array) -> jax.Array:
  """Splits x along its batch axis over the data mesh (unchanged without one; None stays None)."""
  if gan.batch_sharding is None or x_Bx is None:
    return x_Bx
  return jax.lax.with_sharding_constraint(x_Bx, gan.batch_sharding)


def to_float(images_u8: jax.Array) -> jax.Array:
  """Converts uint8 [0, 255] to float32 [-1, 1] (the tutorial's Normalize(0.5, 0.5))."""
  return images_u8.astype(jnp.float32) / 127.5 - 1.0


def _apply_train(module: nn.Module, params: PyTree, batch_stats: PyTree, x: jax.Array,
                 labels_B: jax.Array | None = None):
  """Runs a forward pass with batch statistics (and the batch's classes, for a conditional
  module); returns (output, new batch_stats)."""
  out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x,
                              train=True, labels_B=labels_B, mutable=["batch_stats"])
  return out, updates.get("batch_stats", {})


def _d_update(gan: GAN, state: TrainState, real: jax.Array, fake: jax.Array, j: int | jax.Array,
              labels_B: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """Runs D update j of the iteration on a real and a fake float batch (no gradient flows into
  fake): augmentation, D's loss, R1 on the real and WGAN-GP's penalty on interpolated images.
  A conditional GAN's fake batch has the real batch's classes, labels_B: row i of both, and of
  their interpolation, is of class labels_B[i]."""
  fake = jax.lax.stop_gradient(fake)
  k_real, k_fake, k_mix = jax.random.split(jax.random.fold_in(_step_key(state), _D_KEYS + j), 3)
  if gan.augment:
    real = augment.apply(gan.augment, k_real, real)
    fake = augment.apply(gan.augment, k_fake, fake)

  def loss_fn(d_params):
    def d_fn(stats, x):
      return _apply_train(gan.discriminator, d_params, stats, x, labels_B)

    penalty = jnp.zeros((), jnp.float32)
    if gan.r1_weight > 0:
      grads, real_logits, stats = losses.input_gradients(
          functools.partial(d_fn, state.d_batch_stats), real)
      penalty += gan.r1_weight * losses.r1_penalty(grads)
    else:
      real_logits, stats = d_fn(state.d_batch_stats, real)
    fake_logits, stats = d_fn(stats, fake)
    loss = losses.discriminator_loss(real_logits, fake_logits, gan.label_smoothing, gan.loss)
    if gan.loss == "wgan_gp":
      grads, _, stats = losses.input_gradients(functools.partial(d_fn, stats),
                                               losses.interpolate(k_mix, real, fake))
      penalty += gan.gp_weight * losses.gradient_penalty(grads)
    return loss + penalty, (stats, real_logits, fake_logits, loss, penalty)

  (_, (stats, real_logits, fake_logits, loss, penalty)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.d_params)
  grads = zero_frozen_d(gan.d_frozen, grads)
  updates, opt_state = gan.d_opt.tx.update(grads, state.d_opt_state, state.d_params)
  updates = zero_frozen_d(gan.d_frozen, updates)
  new_state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                            d_batch_stats=stats, d_opt_state=opt_state)
  metrics = {"loss_d": loss,
             "d_x": jnp.mean(jax.nn.sigmoid(real_logits)),
             "d_g_z1": jnp.mean(jax.nn.sigmoid(fake_logits))}
  if gan.has_penalty:
    metrics["d_penalty"] = penalty
  return new_state, metrics


def frozen_d_modules(num_blocks: int) -> frozenset[str]:
  """Names of the modules in D's first num_blocks blocks: each a strided convolution
  (Conv_i) and the norm after it (BatchNorm_{i-1} or LayerNorm_{i-1}; block 0 has none)."""
  convs = {f"Conv_{i}" for i in range(num_blocks)}
  norms = {f"{norm}_{i - 1}" for i in range(1, num_blocks) for norm in ("BatchNorm", "LayerNorm")}
  return frozenset(convs | norms)


def zero_frozen_d(num_blocks: int, tree: PyTree) -> PyTree:
  """D's gradients or updates with those of its first num_blocks blocks set to zero (FreezeD,
  Mo et al. 2020: fine-tuning keeps D's lower layers). Zero gradients leave a fresh Adam's moments
  at zero and let XLA drop the frozen kernels' gradients; zero updates keep the weights exact
  also where Adam's moments are not (freezing turned on in a resumed run)."""
  if not num_blocks:
    return tree
  names = frozen_d_modules(num_blocks)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if getattr(path[0], "key", None) in names else x, tree)


def _earlier_d_updates(gan: GAN, state: TrainState, images_BxDxSxSxC_u8: jax.Array,
                       labels_BxD: jax.Array | None) -> TrainState:
  """Runs the iteration's D updates before its last (d_steps > 1): update j trains on the
  images [:, j] (of classes labels[:, j]) and on G's images of its own noise (of those
  classes)."""
  batch_size = images_BxDxSxSxC_u8.shape[0]

  def body(s: TrainState, xs):
    images_u8, labels, j = xs
    key = jax.random.fold_in(_step_key(s), _EARLIER_NOISE + j)
    z = _split_batch(gan, jax.random.normal(key, (batch_size, gan.nz), jnp.float32))
    fake, _ = _apply_train(gan.generator, s.g_params, s.g_batch_stats, z, labels)
    s, _ = _d_update(gan, s, _split_batch(gan, to_float(images_u8)), fake, j, labels)
    return s, None

  earlier = jnp.moveaxis(images_BxDxSxSxC_u8, 1, 0)[:-1]
  earlier_labels = None if labels_BxD is None else _split_batch(gan, labels_BxD).T[:-1]
  state, _ = jax.lax.scan(body, state, (earlier, earlier_labels, jnp.arange(gan.d_steps - 1)))
  return state


def _last_real(gan: GAN, state: TrainState, images_u8: jax.Array, labels: jax.Array | None
               ) -> tuple[TrainState, jax.Array, jax.Array | None]:
  """Runs the D updates before the last on an iteration's d_steps * B images (the images of
  update j are images[j::d_steps], so each device keeps its part of the batch); returns the
  state, the last update's real batch, float, (B, S, S, C), and its labels (None for an
  unconditional GAN)."""
  _check_labels(gan, images_u8, labels)
  if labels is not None:
    labels = labels.astype(jnp.int32)
  if gan.d_steps == 1:
    return state, _split_batch(gan, to_float(images_u8)), _split_batch(gan, labels)
  n = gan.d_steps
  if images_u8.shape[0] % n:
    raise ValueError(f"{images_u8.shape[0]} images do not divide into {n} D updates")
  per_update = images_u8.reshape((images_u8.shape[0] // n, n) + images_u8.shape[1:])
  labels_per_update = None if labels is None else labels.reshape(-1, n)
  state = _earlier_d_updates(gan, state, per_update, labels_per_update)
  last_labels = None if labels is None else _split_batch(gan, labels_per_update[:, -1])
  return state, _split_batch(gan, to_float(per_update[:, -1])), last_labels


def _check_labels(gan: GAN, images_u8: jax.Array, labels: jax.Array | None) -> None:
  """A conditional GAN takes one label per image; an unconditional one none."""
  if gan.num_classes and (labels is None or labels.shape != images_u8.shape[:1]):
    raise ValueError(f"a conditional GAN needs one label per image: {images_u8.shape[0]} "
                     f"images, labels {None if labels is None else labels.shape}")
  if not gan.num_classes and labels is not None:
    raise ValueError("an unconditional GAN takes no labels")


def _g_loss_of_fake(gan: GAN, state: TrainState, labels_B: jax.Array | None, fake: jax.Array):
  """G's loss as a function of the fake batch (of classes labels_B), against the current D;
  (loss, (D's logits, D's batch_stats after this pass))."""
  if gan.augment:
    fake = augment.apply(gan.augment, jax.random.fold_in(_step_key(state), _G_AUGMENT), fake)
  logits, d_stats = _apply_train(gan.discriminator, state.d_params, state.d_batch_stats, fake,
                                 labels_B)
  return losses.generator_loss(logits, gan.loss), (logits, d_stats)


def _g_update(gan: GAN, state: TrainState, grads: PyTree, stats: PyTree, d_stats: PyTree,
              loss: jax.Array, logits: jax.Array) -> tuple[TrainState, Metrics]:
  updates, opt_state = gan.g_opt.tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  ema = state.g_ema_params
  if gan.g_ema_decay > 0:
    ema = optax.incremental_update(g_params, ema, step_size=1.0 - gan.g_ema_decay)
  new_state = state.replace(g_params=g_params, g_batch_stats=stats, g_opt_state=opt_state,
                            g_ema_params=ema, d_batch_stats=d_stats, step=state.step + 1)
  return new_state, {"loss_g": loss, "d_g_z2": jnp.mean(jax.nn.sigmoid(logits))}


def d_step(gan: GAN, state: TrainState, images_u8: jax.Array,
           labels: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """Runs an iteration's D updates (gan.d_steps of them) on its real uint8 images, d_steps * B
  of them (and their classes, for a conditional GAN), and fresh fake batches of those classes;
  the metrics are the last update's."""
  state, real, labels_B = _last_real(gan, state, images_u8, labels)
  fake, _ = _apply_train(gan.generator, state.g_params, state.g_batch_stats,
                         step_noise(gan, state, real.shape[0]), labels_B)
  return _d_update(gan, state, real, fake, gan.d_steps - 1, labels_B)


def g_step(gan: GAN, state: TrainState, batch_size: int,
           labels_B: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """Runs one generator update on a batch of batch_size (of classes labels_B, for a
  conditional GAN: the last D update's real batch's) against the current D (whose running
  statistics take this pass, as in the tutorial); advances the step counter."""
  z = step_noise(gan, state, batch_size)
  if labels_B is not None:
    labels_B = _split_batch(gan, labels_B.astype(jnp.int32))

  def loss_fn(g_params):
    fake, stats = _apply_train(gan.generator, g_params, state.g_batch_stats, z, labels_B)
    loss, (logits, d_stats) = _g_loss_of_fake(gan, state, labels_B, fake)
    return loss, (stats, d_stats, logits)

  (loss, (stats, d_stats, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.g_params)
  return _g_update(gan, state, grads, stats, d_stats, loss, logits)


def train_step(gan: GAN, state: TrainState, images_u8: jax.Array,
               labels: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """Runs a full iteration, d_step then g_step, with G's forward pass of the last D update run
  once; images_u8 holds d_steps * B images (B with the default single D update), and labels
  their classes (int, (d_steps * B,)) where the GAN is conditional.

  D does not change G, so the G step's fake batch is the last D update's: as in the
  tutorial, G runs forward once and its backward pass reuses that forward's
  residuals (jax.vjp). Equal to d_step followed by g_step (tested).
  """
  state, real, labels_B = _last_real(gan, state, images_u8, labels)
  g_forward = lambda p: _apply_train(gan.generator, p, state.g_batch_stats,  # noqa: E731
                                     step_noise(gan, state, real.shape[0]), labels_B)
  fake, g_vjp, g_stats = jax.vjp(g_forward, state.g_params, has_aux=True)
  state, d_metrics = _d_update(gan, state, real, fake, gan.d_steps - 1, labels_B)
  (loss, (logits, d_stats)), d_fake = jax.value_and_grad(
      functools.partial(_g_loss_of_fake, gan, state, labels_B), has_aux=True)(fake)
  grads, = g_vjp(d_fake)
  state, g_metrics = _g_update(gan, state, grads, g_stats, d_stats, loss, logits)
  return state, {**d_metrics, **g_metrics}


def train_steps(gan: GAN, state: TrainState, images_KxBxSxSxC_u8: jax.Array,
                num_steps: jax.Array | None = None, labels_KxB: jax.Array | None = None
                ) -> tuple[TrainState, Metrics]:
  """Runs K iterations in one dispatch (lax.scan over K batches, and their labels for a
  conditional GAN); metrics stacked to (K,).

  With num_steps (an int32 scalar < K, traced), only the first num_steps batches are trained
  on and the metrics past them are zeros: every chunk shorter than K (a run's first chunk after
  a resume, its last, those cut by log, sample and checkpoint intervals) runs in this one
  program, padded to K, instead of compiling a program for each length.
  """
  def body(s, xs):
    images_u8, labels = xs
    return train_step(gan, s, images_u8, labels)
  return _iterate(body, state, (images_KxBxSxSxC_u8, labels_KxB), num_steps)


def train_steps_gather(gan: GAN, state: TrainState, images_NxSxSxC_u8: jax.Array,
                       indices_KxB: jax.Array, num_steps: jax.Array | None = None,
                       labels_N: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """Runs train_steps on batches gathered on the device from a dataset held there (and, for a
  conditional GAN, its labels, gathered by the same indices)."""
  def body(s, indices_B):
    labels = None if labels_N is None else jnp.take(labels_N, indices_B, axis=0)
    return train_step(gan, s, jnp.take(images_NxSxSxC_u8, indices_B, axis=0), labels)
  return _iterate(body, state, indices_KxB, num_steps)


def _iterate(step, state: TrainState, xs_K: PyTree, num_steps: jax.Array | None
             ) -> tuple[TrainState, Metrics]:
  """state, metrics (K,) of step applied to xs_K[0], xs_K[1], ... (xs_K: a pytree of arrays
  of K rows; None leaves stay None): all K (a scan) or the first num_steps (a loop of a traced
  length; the other metrics are zeros)."""
  if num_steps is None:
    return jax.lax.scan(step, state, xs_K)
  k = jax.tree.leaves(xs_K)[0].shape[0]
  row = lambda i: jax.tree.map(lambda x: x[i], xs_K)  # noqa: E731
  _, shapes = jax.eval_shape(step, state, row(0))
  stacked = jax.tree.map(lambda s: jnp.zeros((k,) + s.shape, s.dtype), shapes)

  def body(i, carry):
    s, metrics_K = carry
    s, metrics = step(s, row(i))
    return s, jax.tree.map(lambda m_K, m: m_K.at[i].set(m), metrics_K, metrics)
  return jax.lax.fori_loop(0, num_steps, body, (state, stacked))


def generate(gan: GAN, state: TrainState, z_BxZ: jax.Array, bn_mode: str = "train",
             ema: bool = False, labels_B: jax.Array | None = None) -> jax.Array:
  """Images in [-1, 1] from G (or, with ema, from its moving average of parameters), of the
  classes labels_B for a conditional GAN; bn_mode 'train' uses the batch's statistics (as the
  tutorial's samples do), 'eval' the running averages (G's own: BatchNorm averages are not
  averaged again)."""
  if bn_mode not in ("train", "eval"):
    raise ValueError(f"bn_mode {bn_mode!r} is not 'train' or 'eval'")
  if ema and state.g_ema_params is None:
    raise ValueError("this state has no generator EMA (config.g_ema_decay is 0)")
  params = state.g_ema_params if ema else state.g_params
  variables = {"params": params, "batch_stats": state.g_batch_stats}
  if bn_mode == "train":
    images, _ = gan.generator.apply(variables, z_BxZ, train=True, labels_B=labels_B,
                                    mutable=["batch_stats"])
    return images
  return gan.generator.apply(variables, z_BxZ, train=False, labels_B=labels_B)
