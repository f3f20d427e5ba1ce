"""PyTorch DCGAN checkpoints: converted models compute what the PyTorch ones compute, the
round trips are exact, wrong files are refused, and the command line imports and exports."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from PIL import Image

from conftest import trees_close
from dcgan_jax import convert, sampling
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.models import Discriminator, Generator

pytestmark = pytest.mark.slow  # compiles both networks in JAX and PyTorch

torch = pytest.importorskip("torch")  # installed in CI (.ci/run)
from benchmarks import drift  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parent.parent


class _Tutorial(torch.nn.Module):
  """The tutorial's wrapper: the layers are an nn.Sequential named `main`."""

  def __init__(self, layers: torch.nn.Sequential):
    super().__init__()
    self.main = layers

  def forward(self, x):
    return self.main(x)


def _torch_pair(size: int, channels: int, seed: int, ngf: int = 8, ndf: int = 8, nz: int = 12):
  """The tutorial's networks (random BatchNorm statistics), wrapped as the tutorial wraps them."""
  return tuple(_Tutorial(m) for m in drift.torch_pair(size, channels, seed, ngf, ndf, nz))


@pytest.mark.xla_default
@pytest.mark.parametrize("size,channels", [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_converted_models_compute_what_pytorch_computes(size, channels):
  net_g, net_d = _torch_pair(size, channels, seed=size + channels)
  g_vars, g_sizes = convert.generator_from_torch(drift.state_dict(net_g))
  d_vars, d_sizes = convert.discriminator_from_torch(drift.state_dict(net_d))
  assert g_sizes == {"image_size": size, "channels": channels, "nz": 12, "ngf": 8}
  assert d_sizes == {"image_size": size, "channels": channels, "ndf": 8}
  gen, disc = Generator(size, channels, ngf=8), Discriminator(size, ndf=8)
  z = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
  x = np.random.default_rng(1).uniform(-1, 1, (6, size, size, channels)).astype(np.float32)
  z_t = torch.from_numpy(z)[:, :, None, None]
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  for train in (False, True):
    net_g.train(train)
    net_d.train(train)
    with torch.no_grad():
      want_g = net_g(z_t).numpy().transpose(0, 2, 3, 1)
      want_d = net_d(x_t).numpy().reshape(-1)  # the tutorial's D ends in a sigmoid
    kwargs = {"mutable": ["batch_stats"]} if train else {}
    got_g = gen.apply(g_vars, z, train=train, **kwargs)
    got_d = disc.apply(d_vars, x, train=train, **kwargs)
    got_g, got_d = (got_g[0], got_d[0]) if train else (got_g, got_d)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-6, err_msg=f"G train={train}")
    np.testing.assert_allclose(jax.nn.sigmoid(got_d), want_d, rtol=1e-5, atol=1e-6,
                               err_msg=f"D train={train}")


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3)])
def test_round_trips_are_exact(size, channels):
  gen, disc = Generator(size, channels, ngf=8), Discriminator(size, ndf=8)
  key_g, key_d = jax.random.split(jax.random.PRNGKey(size))
  g_vars = jax.device_get(gen.init(key_g, jnp.zeros((2, 12)), train=False))
  d_vars = jax.device_get(disc.init(key_d, jnp.zeros((2, size, size, channels)), train=False))
  g_vars["batch_stats"] = jax.tree.map(lambda v: v + 0.5, g_vars["batch_stats"])
  for variables, to_torch, from_torch in (
      (g_vars, convert.generator_to_torch, convert.generator_from_torch),
      (d_vars, convert.discriminator_to_torch, convert.discriminator_from_torch)):
    torch_sd = to_torch(variables)
    back, _ = from_torch(torch_sd)
    assert jax.tree.structure(back) == jax.tree.structure(dict(variables))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(dict(variables))):
      np.testing.assert_array_equal(a, b)
    again = to_torch(back)
    assert list(again) == list(torch_sd)
    for key in torch_sd:
      np.testing.assert_array_equal(again[key], torch_sd[key])
  # The exported keys and shapes are exactly PyTorch's own.
  net_g, net_d = _torch_pair(size, channels, seed=0)
  for net, sd in ((net_g, convert.generator_to_torch(g_vars)),
                  (net_d, convert.discriminator_to_torch(d_vars))):
    theirs = net.state_dict()
    assert list(sd) == list(theirs)
    assert all(tuple(sd[k].shape) == tuple(theirs[k].shape) for k in sd)


def test_wrong_state_dicts_are_refused_naming_the_key():
  net_g, net_d = _torch_pair(64, 3, seed=0)
  g_sd, d_sd = drift.state_dict(net_g), drift.state_dict(net_d)
  with pytest.raises(convert.NotADcganStateDict, match="netD: 'main.2.weight' is missing"):
    convert.discriminator_from_torch(g_sd)
  bad = dict(g_sd, **{"main.4.running_var": np.ones(7, np.float32)})
  with pytest.raises(convert.NotADcganStateDict,
                     match=r"'main.4.running_var' has shape \(7,\) where the DCGAN layout "
                           r"needs \(32,\)"):
    convert.generator_from_torch(bad)
  with pytest.raises(convert.NotADcganStateDict, match="'main.99.bias' .* has no place"):
    convert.generator_from_torch(dict(g_sd, **{"main.99.bias": np.zeros(3, np.float32)}))
  linear = {k: v.numpy() for k, v in torch.nn.Linear(4, 2).state_dict().items()}
  with pytest.raises(convert.NotADcganStateDict, match="0 convolution weights .*'weight'"):
    convert.generator_from_torch(linear)
  # DataParallel's and a bare Sequential's keys are read as the tutorial's.
  wrapped, _ = convert.discriminator_from_torch({f"module.{k}": v for k, v in d_sd.items()})
  bare, _ = convert.discriminator_from_torch({k[len("main."):]: v for k, v in d_sd.items()})
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(wrapped), jax.tree.leaves(bare)))


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                        timeout=300)


@pytest.mark.slow
def test_import_sample_train_on_and_export(tmp_path):
  net_g, net_d = _torch_pair(32, 1, seed=3, ngf=16, ndf=8, nz=100)
  torch.save(net_g.state_dict(), tmp_path / "netG.pth")
  torch.save(net_d.state_dict(), tmp_path / "netD.pth")
  workdir = tmp_path / "run"
  result = _run("-m", "dcgan_jax.convert", "import", f"--netG={tmp_path / 'netG.pth'}",
                f"--netD={tmp_path / 'netD.pth'}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--config.ngf=16 --config.ndf=8" in result.stdout
  # The embedded default keeps G's EMA: it starts at the imported G, as a new run's starts at G.
  _, _, state, _ = workdir_lib.restore(str(workdir))
  assert trees_close(state.g_ema_params, state.g_params)
  # Exported untouched, the files are the originals, tensor for tensor.
  result = _run("-m", "dcgan_jax.convert", "export", f"--workdir={workdir}",
                f"--out={tmp_path / 'out'}")
  assert result.returncode == 0, result.stderr[-2000:]
  for name, net in (("netG.pth", net_g), ("netD.pth", net_d)):
    exported = torch.load(tmp_path / "out" / name, weights_only=True)
    original = net.state_dict()
    assert list(exported) == list(original)
    for key, value in original.items():
      if not key.endswith("num_batches_tracked"):
        assert torch.equal(exported[key], value), key
  # Samples from the imported G, in eval mode, are the PyTorch G's outputs as 8-bit pixels.
  result = _run(str(ROOT / "main.py"), "--mode=sample", f"--workdir={workdir}", "--grid_size=4",
                "--num_images=4", "--bn_mode=eval", "--noema")  # G itself, as PyTorch's
  assert result.returncode == 0, result.stderr[-2000:]
  z = np.array(sampling.fixed_noise(0, 4, 100, sampling.SAMPLE_SALT))  # a writable copy for torch
  net_g.eval()
  with torch.no_grad():
    want = net_g(torch.from_numpy(z)[:, :, None, None]).numpy().transpose(0, 2, 3, 1)
  want_u8 = np.round((want + 1) * 127.5).clip(0, 255)
  for i in range(4):
    got = np.asarray(Image.open(workdir / "samples" / "step0000000_seed0_eval" / f"{i:05d}.png"))
    assert np.abs(got.astype(int) - want_u8[i, ..., 0]).max() <= 1  # rounding at .5 only
  # Training goes on from step 0 with the imported networks.
  result = _run(str(ROOT / "main.py"), f"--workdir={workdir}", "--config.ngf=16",
                "--config.ndf=8", "--config.num_train_steps=2", "--config.batch_size=16",
                "--config.evaluator=", "--config.num_sample_images=4")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resuming at step 0 of 2" in result.stderr


@pytest.mark.slow
def test_import_errors_are_one_line(tmp_path):
  (tmp_path / "notes.pth").write_text("not a checkpoint")
  result = _run("-m", "dcgan_jax.convert", "import", f"--netG={tmp_path / 'notes.pth'}",
                f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert result.stderr.startswith("error: --netG=") and "is not a PyTorch state_dict" in \
      result.stderr and len(result.stderr.strip().splitlines()) == 1
  torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "linear.pth")
  result = _run("-m", "dcgan_jax.convert", "import", f"--netG={tmp_path / 'linear.pth'}",
                f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2 and "netG: 0 convolution weights" in result.stderr
  assert not (tmp_path / "run").exists()


def test_export_of_a_spectral_norm_run_writes_netg_only(tmp_path):
  """A D with spectral norm has no tutorial netD: only netG.pth is written (a warning says why),
  and it is the run's G."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(2)
  config.spectral_norm = True
  train.train_and_evaluate(config, str(tmp_path / "run"))
  paths = convert.export_from_workdir(str(tmp_path / "run"), str(tmp_path / "out"))
  assert [pathlib.Path(p).name for p in paths] == ["netG.pth"]
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["netG.pth"]
  _, _, state, _ = workdir_lib.restore(str(tmp_path / "run"))
  exported = torch.load(tmp_path / "out" / "netG.pth", weights_only=True)
  want = convert.generator_to_torch({"params": jax.device_get(state.g_params),
                                     "batch_stats": jax.device_get(state.g_batch_stats)})
  assert all(np.array_equal(exported[k].numpy(), v) for k, v in want.items())
