"""Data parallelism on fake CPU devices: 1, 4 and 8 devices compute the same steps on the same
global batch, and a checkpoint written with 4 devices restores and trains on 1."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from dcgan_jax import parallel
from dcgan_jax.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parent.parent

_SAME_STEPS = """
import json, dataclasses, sys, jax, numpy as np
from dcgan_jax import parallel, steps
from conftest import tiny_config, tiny_gan
assert len(jax.devices()) == 8
# two D updates per G update and every other variant, class-conditional (labels split as images)
variants = sys.argv[1] == "variants"
counts = [int(n) for n in sys.argv[2].split(",")]
images = np.random.default_rng(0).integers(0, 256, (3, 32 if variants else 16, 32, 32, 1),
                                           dtype=np.uint8)
run = jax.jit(steps.train_steps, static_argnums=0, donate_argnums=1)
out = {}
for n in counts:
  mesh = parallel.make_mesh(n)
  # Adam with a large eps updates in proportion to the gradient, so that float rounding is not
  # magnified into lr * sign(g) as in Adam's first steps with eps 1e-8.
  adam = steps.Adam(learning_rate=1e-2, eps=1.0)
  gan = dataclasses.replace(tiny_gan(), g_opt=adam, d_opt=adam,
                            batch_sharding=parallel.batch_sharding(mesh))
  labels = None
  if variants:
    gan = dataclasses.replace(
        gan, loss="hinge", r1_weight=1.0, d_steps=2, augment=("color", "translation", "cutout"),
        generator=dataclasses.replace(gan.generator, num_classes=3),
        discriminator=dataclasses.replace(gan.discriminator, spectral_norm=True, num_classes=3))
    labels = jax.device_put(np.arange(images.shape[0] * images.shape[1], dtype=np.int32).reshape(
        images.shape[:2]) % 3, parallel.batch_sharding(mesh, batch_axis=1))
  state = jax.device_put(steps.init_train_state(gan, 0), parallel.replicated(mesh))
  batch = jax.device_put(images, parallel.batch_sharding(mesh, batch_axis=1))
  state, metrics = run(gan, state, batch, None, labels)
  out[n] = {"devices": len(state.d_params and jax.tree.leaves(state.d_params)[0].sharding.device_set),
            "batch_devices": len(batch.sharding.device_set),
            "loss_d": np.asarray(metrics["loss_d"]).tolist(),
            "loss_g": np.asarray(metrics["loss_g"]).tolist(),
            "params": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(
                (state.g_params, state.d_params, state.g_batch_stats, state.d_batch_stats))]}
print(json.dumps(out))
"""


def _run_on_8_devices(code: str, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        env=env,
                        cwd=cwd, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("gan,counts", [pytest.param("default", (1, 4, 8), id="default"),
                                        pytest.param("variants", (1, 8), id="variants")])
def test_one_four_and_eight_devices_take_the_same_steps(tmp_path, gan, counts):
  """The default GAN on 1, 4 and 8 devices; the variants' heavier program, class-conditional,
  on 1 and 8."""
  result = _run_on_8_devices(_SAME_STEPS, tmp_path, gan, ",".join(map(str, counts)))
  assert result.returncode == 0, result.stderr[-3000:]
  out = {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
  assert [out[n]["devices"] for n in counts] == list(counts)
  assert [out[n]["batch_devices"] for n in counts] == list(counts)
  # Equal up to the order of floating-point sums. (BatchNorm over each device's part of the
  # batch instead of the global batch would change the losses in the second decimal.) The
  # variants' losses go through more sums (R1's second derivatives, two D updates): their
  # rounding is about 1e-5 of the hinge loss's small values.
  import numpy as np  # pylint: disable=g-import-not-at-top
  rel, atol = (1e-5, 1e-6) if gan == "default" else (1e-4, 1e-5)
  for n in counts[1:]:
    for key in ("loss_d", "loss_g"):
      assert out[n][key] == pytest.approx(out[1][key], rel=rel), (n, key)
    diffs = [np.max(np.abs(np.subtract(a, b))) for a, b in zip(out[n]["params"], out[1]["params"],
                                                                 strict=True)]
    assert max(diffs) < atol, (n, max(diffs))


_RESTORE_ELSEWHERE = """
import sys, jax, numpy as np
from dcgan_jax import train
from conftest import tiny_config
workdir, devices, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = tiny_config(steps)
config.num_devices = devices
# As in _SAME_STEPS: an Adam that updates in proportion to the gradient. With eps 1e-8, Adam's
# first steps (lr * sign(g)) magnify the rounding of R1's second derivatives summed over 4
# devices to 2e-4 in G's parameters after 6 steps, with or without a checkpoint between.
config.adam_eps, config.g_learning_rate, config.d_learning_rate = 1.0, 1e-2, 1e-2
state = train.train_and_evaluate(config, workdir)
np.save(workdir + f"/g_{devices}_{steps}.npy", np.concatenate(
    [np.ravel(x) for x in jax.tree.leaves(state.g_params)]))
"""


@pytest.mark.slow
def test_checkpoint_written_with_4_devices_trains_on_1(tmp_path):
  code = _RESTORE_ELSEWHERE
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
  four = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  for workdir, runs in (("split", [(4, 3, four), (1, 6, env)]), ("whole", [(1, 6, env)])):
    for devices, steps, run_env in runs:
      result = subprocess.run([sys.executable, "-c", code, str(tmp_path / workdir),
                               str(devices), str(steps)], capture_output=True, text=True,
                              env=run_env, cwd=tmp_path, timeout=600)
      assert result.returncode == 0, result.stderr[-3000:]
  import numpy as np  # pylint: disable=g-import-not-at-top
  resumed = np.load(tmp_path / "split" / "g_1_6.npy")
  straight = np.load(tmp_path / "whole" / "g_1_6.npy")
  np.testing.assert_allclose(resumed, straight, rtol=1e-4, atol=1e-6)


def test_batch_must_divide_by_the_devices():
  mesh = parallel.make_mesh(1)
  parallel.check_batch_size(7, mesh)  # one device takes any batch
  with pytest.raises(UsageError, match="num_devices=99 but only"):
    parallel.make_mesh(99)


@pytest.mark.slow
def test_indivisible_batch_is_a_one_line_error(tmp_path):
  result = _run_on_8_devices(
      "import sys\nfrom dcgan_jax import parallel\n"
      "try:\n  parallel.check_batch_size(12, parallel.make_mesh(8))\n"
      "except Exception as e:\n  print(e)\n", tmp_path)
  assert "config.batch_size=12 does not divide by the 8 devices" in result.stdout
