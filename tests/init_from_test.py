"""config.init_from: a new run from another run's networks or from PyTorch .pth files; what it
takes, what it leaves fresh, where it records its start, and the inputs it refuses."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config, trees_close
from dcgan_jax import checkpoint, init_from, steps, train
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError

pytestmark = pytest.mark.slow  # trains runs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
  """A trained run with G's EMA (decay 0.5): its G, EMA and D differ from any fresh init."""
  workdir = tmp_path_factory.mktemp("source") / "run"
  config = tiny_config(4)
  config.g_ema_decay = 0.5
  train.train_and_evaluate(config, str(workdir))
  return workdir


def _config(src, steps_: int = 4, **fields):
  config = tiny_config(steps_)
  config.seed = 3
  config.init_from = str(src)
  config.update(fields)
  return config


def _fresh(config):
  gan = steps.gan_from_config(config)
  return gan, steps.init_train_state(gan, config.seed)


def test_a_new_run_takes_both_networks_and_fresh_optimizers(source, tmp_path):
  config = _config(source)
  _, _, src, src_step = workdir_lib.restore(str(source))
  gan, fresh = _fresh(config)
  state, origin = init_from.start(config, gan, fresh,
                                  init_from.load_source(config, str(tmp_path / "new")))
  assert int(state.step) == 0 and src_step == 4
  for field in ("g_params", "g_batch_stats", "d_params", "d_batch_stats"):
    assert _leaves_equal(getattr(state, field), getattr(src, field)), field
    assert not _leaves_equal(getattr(state, field), getattr(fresh, field)), field
  assert _leaves_equal(state.g_ema_params, src.g_params)  # G's EMA starts at the G taken
  for opt in ("g_opt_state", "d_opt_state"):  # Adam's moments start at zero
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(getattr(state, opt))
               if np.asarray(x).ndim > 0), opt
  assert _leaves_equal(state.rng, fresh.rng)  # the new run's own seed
  assert origin == init_from.Origin(str(source), "workdir", "latest", 4, "G", ())
  ema_config = _config(source, init_g_ema=True, init_checkpoint="latest")
  ema_state, ema_origin = init_from.start(ema_config, gan, fresh,
                                          init_from.load_source(ema_config, str(tmp_path)))
  assert _leaves_equal(ema_state.g_params, src.g_ema_params)
  assert not _leaves_equal(ema_state.g_params, src.g_params)
  assert ema_origin.weights == "G's EMA"
  assert "G's EMA as G" in ema_origin.line()


def test_a_conditional_run_from_an_unconditional_one_has_new_class_parameters(source, tmp_path):
  config = _config(source, conditional=True)
  gan = steps.gan_from_config(config, num_classes=10)
  fresh = steps.init_train_state(gan, config.seed)
  _, _, src, _ = workdir_lib.restore(str(source))
  state, origin = init_from.start(config, gan, fresh,
                                  init_from.load_source(config, str(tmp_path)))
  kernel = np.asarray(state.g_params["Project4x4_0"]["kernel"])
  nz = config.nz
  assert kernel.shape[-1] == nz + 10
  np.testing.assert_array_equal(kernel[..., :nz], src.g_params["Project4x4_0"]["kernel"])
  np.testing.assert_array_equal(kernel[..., nz:],
                                fresh.g_params["Project4x4_0"]["kernel"][..., nz:])
  np.testing.assert_array_equal(state.d_params["class_projection"],
                                fresh.d_params["class_projection"])
  np.testing.assert_array_equal(state.d_params["Conv_0"]["kernel"],
                                src.d_params["Conv_0"]["kernel"])
  assert origin.new_parameters == (f"G Project4x4_0/kernel[..., {nz}:] (the classes' inputs)",
                                   "D class_projection")


def test_pytorch_files_start_a_run(source, tmp_path):
  pytest.importorskip("torch")
  from dcgan_jax import convert  # pylint: disable=g-import-not-at-top
  paths = convert.export_from_workdir(str(source), str(tmp_path / "pth"))
  config = _config(",".join(paths))
  gan, fresh = _fresh(config)
  _, _, src, _ = workdir_lib.restore(str(source))
  state, origin = init_from.start(config, gan, fresh,
                                  init_from.load_source(config, str(tmp_path / "new")))
  assert trees_close(state.g_params, src.g_params) and trees_close(state.d_params, src.d_params)
  assert trees_close(state.d_batch_stats, src.d_batch_stats)
  assert (origin.kind, origin.weights, origin.step) == ("pth", "netG.pth", 0)


def test_the_run_records_its_start_and_never_reads_the_source_again(source, tmp_path, caplog):
  copy = tmp_path / "source_copy"
  shutil.copytree(source, copy)
  config = _config(copy, steps_=4)
  workdir = tmp_path / "new"
  with caplog.at_level("INFO"):
    state = train.train_and_evaluate(config, str(workdir))
  record = json.loads((workdir / "init_from.json").read_text())
  assert record == {"init_from": str(copy), "kind": "workdir", "checkpoint": "latest",
                    "step": 4, "weights": "G", "new_parameters": []}
  summary = next(r.getMessage() for r in caplog.records if "run finished" in r.getMessage())
  assert f"  note: started from {copy} (latest checkpoint, step 4; G as G)" in summary
  assert json.loads((workdir / "config.json").read_text())["init_from"] == str(copy)
  shutil.rmtree(copy)  # resume wins: the source is not read again
  config.num_train_steps = 6
  resumed = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 4 and int(resumed.step) == 6


_SIGKILL_RUN = ["--config.num_train_steps=30", "--config.ngf=8", "--config.ndf=8",
                "--config.batch_size=16", "--config.log_every_steps=5",
                "--config.checkpoint_every_steps=7", "--config.sample_every_steps=100",
                "--config.num_sample_images=4", "--config.evaluator=", "--config.seed=5"]


def _main(workdir, *args) -> list[str]:
  return [sys.executable, str(ROOT / "main.py"), f"--workdir={workdir}", *args]


@pytest.mark.xla_default
def test_a_sigkilled_fine_tuning_run_resumes_exactly(source, tmp_path):
  """With D's first block frozen (FreezeD): it keeps the source's weights through the kill."""
  from reliability_test import _untimed_rows, sigkill_and_resume  # pylint: disable=g-import-not-at-top
  reference, workdir = sigkill_and_resume(tmp_path, [*_SIGKILL_RUN, "--config.freeze_d_layers=1",
                                                     f"--config.init_from={source}"])
  assert _untimed_rows(workdir) == _untimed_rows(reference)
  assert json.loads((workdir / "init_from.json").read_text())["step"] == 4
  gan = steps.gan_from_config(tiny_config(30))
  states = []
  for folder in (reference, workdir):
    ckpt = checkpoint.Checkpointer(os.path.join(folder, "checkpoints"), create=False)
    try:
      states.append(jax.device_get(ckpt.restore(steps.abstract_train_state(gan))))
    finally:
      ckpt.close()
  assert trees_close(states[0], states[1])
  _, _, src, _ = workdir_lib.restore(str(source))
  assert trees_close(states[1].d_params["Conv_0"], src.d_params["Conv_0"])
  assert not trees_close(states[1].d_params["Conv_1"], src.d_params["Conv_1"])


def _damaged(source, tmp_path):
  copy = tmp_path / "damaged"
  shutil.copytree(source, copy)
  for root, _, files in os.walk(copy / "checkpoints"):
    for name in files:
      if not name.endswith(".json"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))
  return copy


def _pth_not_a_dcgan(source, tmp_path):
  torch = pytest.importorskip("torch")
  g, d = tmp_path / "g.pth", tmp_path / "d.pth"
  torch.save({"fc.weight": torch.zeros(3, 4)}, g)
  torch.save({"fc.weight": torch.zeros(3, 4)}, d)
  return f"{g},{d}"


@pytest.mark.parametrize("make, fields, says", [
    (lambda s, t: str(t / "missing"), {}, "is neither a workdir nor two .pth files"),
    (lambda s, t: str(_damaged(s, t)), {}, "cannot be read"),
    (lambda s, t: str(s), {"ngf": 16}, "its run has config.ngf=8, this config 16"),
    (lambda s, t: str(s), {"nz": 64}, "its run has config.nz=100, this config 64"),
    (lambda s, t: str(s), {"image_size": 64}, "config.image_size=32, this config 64"),
    (lambda s, t: str(s), {"channels": 3}, "config.channels=1, this config 3"),
    (lambda s, t: str(s), {"init_checkpoint": "best"}, "has no best checkpoint"),
    (lambda s, t: str(s), {"loss": "wgan_gp"}, "its D has no"),
    (lambda s, t: str(t / "new"), {}, "this run's own workdir"),
    (_pth_not_a_dcgan, {}, "is not a PyTorch DCGAN state_dict"),
])
def test_bad_sources_are_refused_in_one_line_and_nothing_is_written(source, tmp_path, make,
                                                                    fields, says):
  config = _config(make(source, tmp_path), **fields)
  workdir = tmp_path / "new"
  with pytest.raises(UsageError) as e:
    train.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert message.startswith("config.init_from=") and says in message and "\n" not in message
  assert not workdir.exists() or not os.listdir(workdir)


def test_ema_that_the_source_has_not(tmp_path):
  src = tmp_path / "no_ema"
  config = tiny_config(2)
  config.g_ema_decay = 0.0
  train.train_and_evaluate(config, str(src))
  with pytest.raises(UsageError, match="trained without a generator EMA") as e:
    train.train_and_evaluate(_config(src, init_g_ema=True), str(tmp_path / "new"))
  assert str(e.value).startswith(f"config.init_from={str(src)!r}")
  assert not (tmp_path / "new").exists()


def test_a_conditional_source_starts_only_conditional_runs(tmp_path):
  src = tmp_path / "conditional"
  config = tiny_config(2)
  config.conditional = True
  train.train_and_evaluate(config, str(src))
  with pytest.raises(UsageError, match="its run is conditional on 10 classes, this one on 0"):
    train.train_and_evaluate(_config(src), str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


def test_init_from_with_a_workdir_of_another_run_is_refused(source, tmp_path):
  other = tmp_path / "other"
  config = tiny_config(2)
  config.seed = 3  # as _config's: only init_from differs
  train.train_and_evaluate(config, str(other))  # started from scratch
  before = sorted(os.listdir(other))
  with pytest.raises(UsageError) as e:
    train.train_and_evaluate(_config(source, steps_=4), str(other))
  assert str(e.value) == (
      f"--workdir={str(other)!r} holds a run trained with config.init_from='' (its config.json), "
      f"this config has {str(source)!r}: resume it with --config.init_from=, or use another "
      "--workdir")
  assert sorted(os.listdir(other)) == before


def test_main_exits_2_on_a_bad_source(tmp_path):
  result = subprocess.run(_main(tmp_path / "new", "--config.num_train_steps=2",
                                f"--config.init_from={tmp_path / 'nowhere'}"),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1].endswith("is neither a workdir nor two .pth files (NETG.pth,NETD.pth)")
  assert not (tmp_path / "new").exists()
