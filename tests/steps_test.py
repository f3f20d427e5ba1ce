"""The D and G update steps: what each changes, what it leaves alone, and their numbers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import losses, steps
from conftest import jit_apply_train, jit_d_step, jit_g_step, jit_train_step, tiny_gan, trees_close


def _all_differ(a, b) -> bool:
  return all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_state_is_one_pytree_of_arrays(state):
  leaves = jax.tree.leaves(state)
  assert all(isinstance(x, jax.Array) for x in leaves)
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  # Adam's moments live in the optimizer states, one per parameter.
  assert len(jax.tree.leaves(state.g_opt_state)) == 2 * len(jax.tree.leaves(state.g_params)) + 1


def test_d_step_changes_d_only(gan, state, real_batch):
  new, metrics = jit_d_step(gan, state, real_batch)
  assert _all_differ(new.d_params, state.d_params)
  assert _all_differ(new.d_batch_stats, state.d_batch_stats)
  assert not trees_close(new.d_opt_state, state.d_opt_state)
  for field in ("g_params", "g_batch_stats", "g_opt_state", "step", "rng"):
    assert trees_close(getattr(new, field), getattr(state, field)), field
  assert all(bool(jnp.isfinite(v)) for v in metrics.values())


@pytest.mark.slow
def test_g_step_changes_g_and_only_d_running_statistics(gan, state):
  new, metrics = jit_g_step(gan, state, 4)
  assert _all_differ(new.g_params, state.g_params)
  assert _all_differ(new.g_batch_stats, state.g_batch_stats)
  assert int(new.step) == 1
  for field in ("d_params", "d_opt_state", "rng"):
    assert trees_close(getattr(new, field), getattr(state, field)), field
  # As in the tutorial, D's pass over G's batch moves D's running statistics, and only by it.
  fake, _ = jit_apply_train(gan.generator, state.g_params, state.g_batch_stats,
                            steps.step_noise(gan, state, 4))
  _, want = jit_apply_train(gan.discriminator, state.d_params, state.d_batch_stats, fake)
  assert _all_differ(new.d_batch_stats, state.d_batch_stats)
  assert trees_close(new.d_batch_stats, want, rtol=1e-6)
  assert all(bool(jnp.isfinite(v)) for v in metrics.values())


@pytest.mark.slow
def test_gradients_are_finite_and_nonzero(gan, state, real_batch):
  z = steps.step_noise(gan, state, 4)

  def g_loss(g_params):
    fake, _ = jit_apply_train(gan.generator, g_params, state.g_batch_stats, z)
    logits, _ = jit_apply_train(gan.discriminator, state.d_params, state.d_batch_stats, fake)
    return losses.generator_loss(logits)

  grads = jax.jit(jax.grad(g_loss))(state.g_params)
  for g in jax.tree.leaves(grads):
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0


def test_d_step_loss_and_metrics_match_a_hand_written_forward(gan, state, real_batch):
  _, metrics = jit_d_step(gan, state, real_batch)
  real = real_batch.astype(np.float32) / 127.5 - 1
  fake, _ = jit_apply_train(gan.generator, state.g_params, state.g_batch_stats,
                               steps.step_noise(gan, state, 4))
  real_logits, stats = jit_apply_train(gan.discriminator, state.d_params,
                                          state.d_batch_stats, real)
  fake_logits, _ = jit_apply_train(gan.discriminator, state.d_params, stats, fake)
  p_real, p_fake = jax.nn.sigmoid(real_logits), jax.nn.sigmoid(fake_logits)
  expected = -np.mean(np.log(p_real)) - np.mean(np.log(1 - p_fake))
  assert float(metrics["loss_d"]) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["d_x"]) == pytest.approx(float(np.mean(p_real)), rel=1e-6)
  assert float(metrics["d_g_z1"]) == pytest.approx(float(np.mean(p_fake)), rel=1e-6)


def test_d_running_stats_are_updated_by_real_then_fake(gan, state, real_batch):
  new, _ = jit_d_step(gan, state, real_batch)
  real = real_batch.astype(np.float32) / 127.5 - 1
  fake, _ = jit_apply_train(gan.generator, state.g_params, state.g_batch_stats,
                               steps.step_noise(gan, state, 4))
  _, after_real = jit_apply_train(gan.discriminator, state.d_params, state.d_batch_stats, real)
  _, after_both = jit_apply_train(gan.discriminator, state.d_params, after_real, fake)
  for got, want, real_only in zip(jax.tree.leaves(new.d_batch_stats), jax.tree.leaves(after_both),
                                  jax.tree.leaves(after_real)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(want, real_only, rtol=1e-3, atol=0)  # the fake pass counted too


def test_g_step_trains_on_the_d_steps_fake_batch(gan, state, real_batch):
  # Both steps of one iteration draw the same z, so D(G(z)) before the G update
  # is computed on the batch that D just trained against.
  after_d, _ = jit_d_step(gan, state, real_batch)
  np.testing.assert_array_equal(steps.step_noise(gan, state, 4), steps.step_noise(gan, after_d, 4))
  after_g, _ = jit_g_step(gan, after_d, 4)
  assert not np.array_equal(steps.step_noise(gan, after_d, 4), steps.step_noise(gan, after_g, 4))


@pytest.mark.slow
def test_label_smoothing_changes_the_d_loss_by_the_hand_computed_amount(state, real_batch):
  _, plain = jit_d_step(tiny_gan(), state, real_batch)
  _, smooth = jit_d_step(tiny_gan(label_smoothing=0.1), state, real_batch)
  # BCE(x, 0.9) - BCE(x, 1) = 0.1 * mean(x) over the real logits x.
  real = real_batch.astype(np.float32) / 127.5 - 1
  logits, _ = jit_apply_train(tiny_gan().discriminator, state.d_params,
                                 state.d_batch_stats, real)
  diff = float(smooth["loss_d"]) - float(plain["loss_d"])
  assert diff == pytest.approx(0.1 * float(jnp.mean(logits)), abs=1e-6)


@pytest.mark.slow
def test_train_step_is_d_step_then_g_step(gan, state, real_batch):
  # train_step runs G forward once and reuses it for the G update (jax.vjp).
  combined, m = jit_train_step(gan, state, real_batch)
  s, d_metrics = jit_d_step(gan, state, real_batch)
  s, g_metrics = jit_g_step(gan, s, 4)
  for a, b in zip(jax.tree.leaves(combined), jax.tree.leaves(s)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert set(m) == set(d_metrics) | set(g_metrics)
  for name, value in {**d_metrics, **g_metrics}.items():
    np.testing.assert_allclose(m[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_same_seed_same_state_other_seed_differs(gan, real_batch):
  a = steps.init_train_state(gan, 3)
  b = steps.init_train_state(gan, 3)
  c = steps.init_train_state(gan, 4)
  assert trees_close(a, b) and not trees_close(a.g_params, c.g_params)
  a, _ = jit_train_step(gan, a, real_batch)
  b, _ = jit_train_step(gan, b, real_batch)
  assert trees_close(a, b)


def test_compile_init_leaves_init_train_state_nothing_to_compile():
  """The program compile_init compiles (without running it) is init_train_state's, for any
  seed: init_train_state then asks for no compilation and gives the same state."""
  gan = dataclasses.replace(tiny_gan(), nz=24)  # a program of this test's own
  asked, listening = [], [True]
  def on_event(name, *args, **kwargs):  # pylint: disable=unused-argument
    if listening[0] and ("backend_compile" in name or "compilation_cache" in name):
      asked.append(name)  # XLA's or the cache's
  # registered for good: jax 0.8 has no way to take a listener back; this one goes quiet
  jax.monitoring.register_event_listener(on_event)
  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    steps.compile_init(gan)
    compiled = len(asked)
    state = steps.init_train_state(gan, 7)
    asked_by_init = len(asked) - compiled
  finally:
    listening[0] = False
  assert compiled >= 1 and asked_by_init == 0, asked[compiled:]
  assert trees_close(state, jax.jit(steps.create_train_state, static_argnums=0)(
      gan, jax.random.PRNGKey(7)))
  assert not trees_close(state.g_params, steps.init_train_state(gan, 8).g_params)


def test_generate_bn_modes(gan, state):
  z = jax.random.normal(jax.random.PRNGKey(9), (4, 16))
  generate = jax.jit(steps.generate, static_argnums=(0, 3))
  train_mode = generate(gan, state, z, "train")
  eval_mode = generate(gan, state, z, "eval")
  assert train_mode.shape == eval_mode.shape == (4, 32, 32, 1)
  assert float(jnp.max(jnp.abs(train_mode - eval_mode))) > 1e-3
  with pytest.raises(ValueError, match="'test'"):
    steps.generate(gan, state, z, "test")


def test_to_float_range():
  x = steps.to_float(np.array([0, 255, 128], np.uint8))
  np.testing.assert_allclose(x, [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-7)


@pytest.mark.slow
def test_train_steps_scan_equals_single_steps(gan, state, real_batch):
  rng = np.random.default_rng(1)
  chunk = rng.integers(0, 256, (3,) + real_batch.shape, dtype=np.uint8)
  scanned, metrics = jax.jit(steps.train_steps, static_argnums=0)(gan, state, chunk)
  assert metrics["loss_d"].shape == (3,) and int(scanned.step) == 3
  single = state
  for k in range(3):
    single, m = jit_train_step(gan, single, chunk[k])
    assert float(m["loss_g"]) == pytest.approx(float(metrics["loss_g"][k]), rel=1e-4)
  for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_shorter_chunk_padded_to_k_runs_exactly_its_steps(gan, state, real_batch):
  """train_steps over K batches with num_steps k < K (the one program of every shorter chunk)
  equals the scan of the first k batches exactly; the metrics past k are zeros."""
  chunk = np.random.default_rng(3).integers(0, 256, (3,) + real_batch.shape, dtype=np.uint8)
  fn = jax.jit(steps.train_steps, static_argnums=0)
  padded, metrics = fn(gan, state, chunk, jnp.int32(2))
  scanned, expected = fn(gan, state, chunk[:2])
  assert int(padded.step) == 2 and trees_close(padded, scanned)
  for name, values in metrics.items():
    assert values.shape == (3,) and float(values[2]) == 0.0
    np.testing.assert_array_equal(values[:2], expected[name])


@pytest.mark.slow
def test_train_steps_gather_equals_train_steps(gan, state):
  data = np.random.default_rng(2).integers(0, 256, (10, 32, 32, 1), dtype=np.uint8)
  indices = np.array([[0, 3, 5, 9], [1, 2, 4, 8]], np.int32)
  a, _ = jax.jit(steps.train_steps_gather, static_argnums=0)(gan, state, data, indices)
  b, _ = jax.jit(steps.train_steps, static_argnums=0)(gan, state, data[indices])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_generator_ema_follows_the_hand_computed_average(gan, real_batch):
  ema_gan = dataclasses.replace(gan, g_ema_decay=0.9)
  state = steps.init_train_state(ema_gan, 0)
  _leaves_match(state.g_ema_params, state.g_params)
  one, _ = jit_train_step(ema_gan, state, real_batch)
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.g_ema_params, one.g_params)
  _leaves_match(one.g_ema_params, expected)
  two, _ = jit_train_step(ema_gan, one, real_batch)
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, one.g_ema_params, two.g_params)
  _leaves_match(two.g_ema_params, expected)
  # The EMA changes nothing else: the same run without it has the same G and D.
  plain, _ = jit_train_step(gan, steps.init_train_state(gan, 0), real_batch)
  _leaves_match(plain.g_params, one.g_params)
  assert plain.g_ema_params is None
  # Sampling the EMA uses its parameters.
  z = jax.random.normal(jax.random.PRNGKey(0), (4, gan.nz))
  generate = jax.jit(steps.generate, static_argnums=(0, 3, 4))
  from_ema = generate(ema_gan, two, z, "eval", True)
  manual = generate(ema_gan, two.replace(g_params=two.g_ema_params), z, "eval", False)
  np.testing.assert_allclose(from_ema, manual, rtol=1e-6)
  with pytest.raises(ValueError, match="no generator EMA"):
    generate(gan, plain, z, "eval", True)


def _leaves_match(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def _variant(**fields) -> steps.GAN:
  """tiny_gan with GAN fields (loss, r1_weight, d_steps, augment) and D's norm/spectral norm."""
  norm = fields.pop("norm", "batch")
  sn = fields.pop("spectral_norm", False)
  gan = tiny_gan()
  gan = dataclasses.replace(gan, discriminator=dataclasses.replace(
      gan.discriminator, norm=norm, spectral_norm=sn))
  return dataclasses.replace(gan, **fields)


VARIANTS = {
    "hinge": dict(loss="hinge"),
    "lsgan": dict(loss="lsgan"),
    "wgan_gp": dict(loss="wgan_gp", gp_weight=10.0, norm="layer", d_steps=2),
    "spectral_norm": dict(spectral_norm=True),
    "r1": dict(r1_weight=1.0),
    "diffaugment": dict(augment=("color", "translation", "cutout")),
}
# Whole training steps, each variant's code in one of them: a loss with a D change.
STEP_VARIANTS = {
    "hinge_spectral_norm": {**VARIANTS["hinge"], **VARIANTS["spectral_norm"]},
    "lsgan_diffaugment": {**VARIANTS["lsgan"], **VARIANTS["diffaugment"]},
    "wgan_gp": VARIANTS["wgan_gp"],
    "r1": VARIANTS["r1"],
}


def _images(gan: steps.GAN, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (4 * gan.d_steps, 32, 32, 1), np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STEP_VARIANTS))
def test_variant_train_step_is_d_step_then_g_step(name):
  gan = _variant(**STEP_VARIANTS[name])
  state = steps.init_train_state(gan, 0)
  images = _images(gan)
  combined, m = jit_train_step(gan, state, images)
  s, d_metrics = jit_d_step(gan, state, images)
  s, g_metrics = jit_g_step(gan, s, 4)
  assert trees_close(combined, s, rtol=1e-4, atol=1e-5)
  assert set(m) == set(d_metrics) | set(g_metrics)
  assert ("d_penalty" in m) == (name in ("wgan_gp", "r1"))
  for value in m.values():
    assert np.isfinite(value)
  assert not trees_close(combined.d_params, state.d_params)
  assert not trees_close(combined.g_params, state.g_params)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hinge", "lsgan"])
def test_variant_d_loss_matches_a_hand_written_forward(state, real_batch, name):
  """The D step's loss is the variant's, on the logits of D's real-then-fake forward passes."""
  gan = _variant(**VARIANTS[name])
  _, metrics = jit_d_step(gan, state, real_batch)
  fake, _ = jit_apply_train(gan.generator, state.g_params, state.g_batch_stats,
                            steps.step_noise(gan, state, 4))
  real_logits, stats = jit_apply_train(gan.discriminator, state.d_params, state.d_batch_stats,
                                       steps.to_float(real_batch))
  fake_logits, _ = jit_apply_train(gan.discriminator, state.d_params, stats, fake)
  r, f = np.asarray(real_logits, np.float64), np.asarray(fake_logits, np.float64)
  if name == "hinge":
    expected = np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f))
  else:
    expected = 0.5 * np.mean((r - 1) ** 2) + 0.5 * np.mean(f ** 2)
  assert float(metrics["loss_d"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_r1_penalty_in_the_d_step_is_its_weight_times_the_input_gradient_norm(state, real_batch):
  gan = _variant(r1_weight=3.0)
  _, metrics = jit_d_step(gan, state, real_batch)
  _, plain = jit_d_step(tiny_gan(), state, real_batch)

  def total(x):
    return jnp.sum(jit_apply_train(gan.discriminator, state.d_params, state.d_batch_stats, x)[0])

  grads = np.asarray(jax.grad(total)(steps.to_float(real_batch)), np.float64)
  expected = 3.0 * 0.5 * np.mean(np.sum(grads.reshape(4, -1) ** 2, axis=1))
  assert float(metrics["d_penalty"]) == pytest.approx(expected, rel=1e-4)
  assert float(metrics["loss_d"]) == pytest.approx(float(plain["loss_d"]), rel=1e-6)  # apart


@pytest.mark.slow
def test_several_d_updates_per_g_update():
  """d_steps=3: three D updates (Adam's count 3), one G update, each D update on its own third
  of the images (images[j::3]): changing the first update's images changes the result."""
  gan = _variant(d_steps=3)
  state = steps.init_train_state(gan, 0)
  images = _images(gan)
  new, _ = jit_train_step(gan, state, images)
  counts = lambda opt: [int(x) for x in jax.tree.leaves(opt) if x.ndim == 0]  # noqa: E731
  assert counts(new.d_opt_state) == [3] and counts(new.g_opt_state) == [1]
  assert int(new.step) == 1
  other = images.copy()
  other[0::3] = 255 - other[0::3]
  changed, _ = jit_train_step(gan, state, other)
  assert not trees_close(changed.d_params, new.d_params)
  with pytest.raises(ValueError, match="12 images do not divide into 5"):
    steps.train_step(_variant(d_steps=5), state, images)


@pytest.mark.slow
def test_spectral_norm_vectors_live_in_d_batch_stats_and_move_with_every_training_pass(
    real_batch):
  gan = _variant(spectral_norm=True, norm="none")
  state = steps.init_train_state(gan, 0)
  assert set(state.d_batch_stats) == {f"Conv_{i}" for i in range(4)}
  after_d, _ = jit_d_step(gan, state, real_batch)
  wide = lambda stats: {k: v for k, v in stats.items() if k != "Conv_3"}  # noqa: E731
  assert _all_differ(wide(after_d.d_batch_stats), wide(state.d_batch_stats))
  assert float(after_d.d_batch_stats["Conv_3"]["sn_u"][0]) in (-1.0, 1.0)  # one output: +-1
  after_g, _ = jit_g_step(gan, after_d, 4)  # D's pass in the G step advances them too (PyTorch's)
  assert _all_differ(wide(after_g.d_batch_stats), wide(after_d.d_batch_stats))
  assert trees_close(after_g.d_params, after_d.d_params)


@pytest.mark.slow
def test_critic_without_any_norm_has_no_d_batch_stats(real_batch):
  gan = _variant(norm="none")
  state = steps.init_train_state(gan, 0)
  assert not jax.tree.leaves(state.d_batch_stats)
  new, metrics = jit_train_step(gan, state, real_batch)
  assert np.isfinite(metrics["loss_d"]) and not jax.tree.leaves(new.d_batch_stats)


@pytest.mark.slow
def test_diffaugment_changes_the_step_and_is_fixed_by_the_seed(state, real_batch):
  gan = _variant(augment=("translation", "cutout"))
  a, ma = jit_train_step(gan, state, real_batch)
  b, mb = jit_train_step(gan, state, real_batch)
  _, plain = jit_train_step(tiny_gan(), state, real_batch)
  assert trees_close(a, b) and float(ma["loss_d"]) == float(mb["loss_d"])
  assert float(ma["loss_d"]) != float(plain["loss_d"])
  assert float(ma["loss_g"]) != float(plain["loss_g"])  # the G step's D input is augmented too


def _conditional(**fields) -> steps.GAN:
  """_variant's GAN, class-conditional on 3 classes."""
  gan = _variant(**fields)
  return dataclasses.replace(
      gan, generator=dataclasses.replace(gan.generator, num_classes=3),
      discriminator=dataclasses.replace(gan.discriminator, num_classes=3))


_LABELS = np.array([0, 2, 1, 2], np.int32)


def test_conditional_step_trains_on_the_labels_and_refuses_a_mismatch(real_batch):
  gan = _conditional()
  assert gan.num_classes == 3
  state = steps.init_train_state(gan, 0)
  assert state.d_params["class_projection"].shape == (3, 32)
  a, ma = jit_train_step(gan, state, real_batch, _LABELS)
  b, mb = jit_train_step(gan, state, real_batch, _LABELS[::-1].copy())
  for name in ("loss_d", "loss_g"):
    assert np.isfinite(ma[name]) and float(ma[name]) != float(mb[name])
  assert not trees_close(a.g_params, b.g_params)
  # the class embedding's gradient reaches only the rows of the classes in the batch
  one_class, _ = jit_train_step(gan, state, real_batch, np.zeros(4, np.int32))
  moved = np.abs(np.asarray(one_class.d_params["class_projection"]) -
                 np.asarray(state.d_params["class_projection"])).sum(axis=1)
  assert moved[0] > 0 and moved[1] == moved[2] == 0
  with pytest.raises(ValueError, match="needs one label per image: 4 images, labels None"):
    steps.train_step(gan, state, real_batch)
  with pytest.raises(ValueError, match="an unconditional GAN takes no labels"):
    steps.train_step(tiny_gan(), steps.init_train_state(tiny_gan(), 0), real_batch, _LABELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wgan_gp", "r1"])
def test_conditional_variant_train_step_is_d_step_then_g_step(name):
  """The variants whose code meets the labels again: WGAN-GP (interpolations of one class,
  several D updates per G update, each taking its own labels, images[j::d_steps]) and R1
  (D's input gradient at the real images' classes)."""
  gan = _conditional(**STEP_VARIANTS[name])
  state = steps.init_train_state(gan, 0)
  images = _images(gan)
  labels = np.resize(_LABELS, len(images))
  combined, m = jit_train_step(gan, state, images, labels)
  s, _ = jit_d_step(gan, state, images, labels)
  s, _ = jit_g_step(gan, s, 4, labels[gan.d_steps - 1::gan.d_steps])
  assert trees_close(combined, s, rtol=1e-4, atol=1e-5)
  assert all(np.isfinite(v) for v in m.values())


@pytest.mark.slow
def test_conditional_scan_padded_chunk_and_gather_equal_single_steps():
  gan = _conditional()
  state = steps.init_train_state(gan, 0)
  rng = np.random.default_rng(4)
  data = rng.integers(0, 256, (10, 32, 32, 1), dtype=np.uint8)
  data_labels = rng.integers(0, 3, 10).astype(np.int32)
  indices = np.array([[0, 3, 5, 9], [1, 2, 4, 8], [6, 7, 0, 1]], np.int32)
  single = state
  for k in range(3):
    single, _ = jit_train_step(gan, single, data[indices[k]], data_labels[indices[k]])
  scan = jax.jit(steps.train_steps, static_argnums=0)
  scanned, _ = scan(gan, state, data[indices], None, data_labels[indices])
  assert int(scanned.step) == 3 and trees_close(scanned, single, rtol=1e-4, atol=1e-6)
  gathered, _ = jax.jit(steps.train_steps_gather, static_argnums=0)(
      gan, state, data, indices, None, data_labels)
  assert trees_close(gathered, scanned, rtol=1e-5, atol=1e-7)
  padded, metrics = scan(gan, state, data[indices], jnp.int32(2), data_labels[indices])
  first_two, _ = scan(gan, state, data[indices[:2]], None, data_labels[indices[:2]])
  assert int(padded.step) == 2 and trees_close(padded, first_two)
  assert float(metrics["loss_d"][2]) == 0.0


def test_conditional_generate_draws_the_asked_classes(state):
  gan = _conditional()
  state = steps.init_train_state(gan, 0)
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 16))
  for bn_mode in ("train", "eval"):
    a = steps.generate(gan, state, z, bn_mode, labels_B=jnp.array([0, 1, 2]))
    b = steps.generate(gan, state, z, bn_mode, labels_B=jnp.array([2, 1, 0]))
    assert a.shape == (3, 32, 32, 1) and not np.allclose(a, b)
  eval_a = steps.generate(gan, state, z, "eval", labels_B=jnp.array([0, 1, 2]))
  np.testing.assert_array_equal(eval_a[1], b[1])  # running averages: image 1 is its own


@pytest.mark.parametrize("norm, frozen", [("batch", {"Conv_0", "Conv_1", "BatchNorm_0"}),
                                          ("layer", {"Conv_0", "Conv_1", "LayerNorm_0"}),
                                          ("none", {"Conv_0", "Conv_1"})])
def test_frozen_d_blocks_keep_their_weights_and_the_rest_trains_as_in_an_unfrozen_step(
    real_batch, norm, frozen):
  gan = _variant(norm=norm)
  state = steps.init_train_state(gan, 0)
  assert frozen == steps.frozen_d_modules(2) & set(state.d_params)  # the names D's modules have
  new, _ = jit_d_step(dataclasses.replace(gan, d_frozen=2), state, real_batch)
  free, _ = jit_d_step(gan, state, real_batch)
  mu = new.d_opt_state[0].mu
  for name in state.d_params:
    if name in frozen:  # the weights exactly, Adam's moments still zero
      assert trees_close(new.d_params[name], state.d_params[name]), name
      assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(mu[name])), name
    else:  # the same gradients as an unfrozen step: the forward pass is the same
      assert _all_differ(new.d_params[name], state.d_params[name]), name
      _leaves_match(new.d_params[name], free.d_params[name])
  assert trees_close(new.g_params, state.g_params)


def test_freezing_d_blocks_of_a_trained_state_keeps_them_exactly(gan, state, real_batch):
  """Adam's moments of a state trained unfrozen would still move the weights; the frozen
  blocks' updates are zero whatever the moments (freezing turned on in a resumed run)."""
  trained, _ = jit_d_step(gan, state, real_batch)
  assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(trained.d_opt_state[0].mu["Conv_0"]))
  new, _ = jit_d_step(dataclasses.replace(gan, d_frozen=3), trained, real_batch[::-1])
  for name in steps.frozen_d_modules(3) & set(state.d_params):
    assert trees_close(new.d_params[name], trained.d_params[name]), name
  assert _all_differ(new.d_params["Conv_3"], trained.d_params["Conv_3"])
