"""Bad input is refused with one line naming the field, file or value, before anything is
written: every case's message checked in process (train, sample, serve), then a few cases
through main.py for the exit status, the one line on stderr and the files left untouched."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import pytest

import dcgan_jax
from dcgan_jax.configs import default
from dcgan_jax import configuration, eval_run, sampling, serve, train
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import RunError, UsageError
from conftest import folder_run_config, make_image_folder, tiny_config, truncate_checkpoint_arrays

ROOT = pathlib.Path(__file__).resolve().parent.parent

# name: (config fields set on tiny_config, what the one line says); "{loop}" is a symlink to
# itself. Each field has a bound the program can honour.
CONFIG_VALUES = {
    "data_dir_symlink_loop": ({"dataset": "imagefolder", "data_dir": "{loop}"},
                              "config.data_dir='{loop}' cannot be resolved"),
    "cache_dir_in_proc": ({"cache_dir": "/proc/nope"}, "config.cache_dir='/proc/nope' "),
    "learning_rate_inf": ({"g_learning_rate": float("inf")},
                          "config.g_learning_rate=inf must be positive and finite"),
    "learning_rate_nan": ({"d_learning_rate": float("nan")},
                          "config.d_learning_rate=nan must be positive and finite"),
    "epochs_inf": ({"num_train_steps": -1, "num_epochs": float("inf")},
                   "config.num_epochs=inf must be finite"),
    "eval_num_samples_1e9": ({"eval_num_samples": 10**9},
                             "config.eval_num_samples=1000000000 is too large (at most 100,000)"),
    "num_train_steps_1e30": ({"num_train_steps": 10**30}, "is too large (at most 2,147,483,647)"),
    "batch_size_1e12": ({"batch_size": 10**12},
                        "config.batch_size=1000000000000 is too large (at most 65,536)"),
    "batch_size_0": ({"batch_size": 0}, "config.batch_size=0 must be positive"),
    "batch_size_2.5": ({"batch_size": 2.5}, "config.batch_size=2.5 is a float; it must be a int"),
    "batch_size_over_the_dataset": ({"batch_size": 6000},
                                    "has 5000 readable images, fewer than config.batch_size=6000"),
    "num_devices_3": ({"num_devices": 3}, "config.num_devices=3 but only 1 cpu"),
    "ngf_4096": ({"ngf": 4096}, "config.ngf=4096 is too large (at most 512)"),
    "decode_workers_1e6": ({"decode_workers": 10**6},
                           "config.decode_workers=1000000 is too large (at most 256)"),
    "max_image_pixels_0": ({"max_image_pixels": 0}, "config.max_image_pixels=0 must be positive"),
    "seed_minus_1": ({"seed": -1}, "config.seed=-1 must be in [0, 2**32)"),
    "label_smoothing_1": ({"label_smoothing": 1.0}, "config.label_smoothing=1.0 must be in [0, 1)"),
    "image_size_48": ({"image_size": 48}, "config.image_size=48 is not supported"),
    "loss_unknown": ({"loss": "wgan"}, "config.loss='wgan' is not one of bce, hinge, lsgan, "
                                       "wgan_gp"),
    "d_norm_unknown": ({"d_norm": "group"}, "config.d_norm='group' is not one of auto, batch"),
    "wgan_gp_with_batchnorm": ({"loss": "wgan_gp", "d_norm": "batch"},
                               "config.d_norm='batch' cannot be used with loss='wgan_gp'"),
    "hinge_with_label_smoothing": ({"loss": "hinge", "label_smoothing": 0.1},
                                   "config.label_smoothing=0.1 has no target to smooth with "
                                   "loss='hinge'"),
    "gp_weight_negative": ({"gp_weight": -1.0}, "config.gp_weight=-1.0 must be >= 0 and finite"),
    "r1_weight_nan": ({"r1_weight": float("nan")}, "config.r1_weight=nan must be >= 0 and finite"),
    "d_steps_0": ({"d_steps_per_g_step": 0}, "config.d_steps_per_g_step=0 must be >= 1"),
    "d_steps_1000": ({"d_steps_per_g_step": 1000},
                     "config.d_steps_per_g_step=1000 is too large (at most 100)"),
    "d_steps_over_the_dataset": ({"batch_size": 1000, "d_steps_per_g_step": 6},
                                 "has 5000 readable images, fewer than config.batch_size=1000 x "
                                 "config.d_steps_per_g_step=6"),
    "diffaugment_unknown": ({"diffaugment": "color,zoom"},
                            "config.diffaugment='color,zoom': 'zoom' is not one of color, "
                            "translation, cutout"),
    "freeze_d_4_at_32": ({"freeze_d_layers": 4},
                         "config.freeze_d_layers=4 must be from 0 to 3 (D's strided blocks at "
                         "image_size 32)"),
    "freeze_d_negative": ({"freeze_d_layers": -1}, "config.freeze_d_layers=-1 must be from 0"),
    "unknown_field": ({"num_steps": 100}, "config.num_steps is not a field of configs/default.py "
                                          "(did you mean num_train_steps?"),
}


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("loop") / "loop"
  os.symlink(path, path)
  return path


@pytest.mark.parametrize("name", sorted(CONFIG_VALUES))
def test_config_value_is_refused_before_anything_is_written(name, loop, tmp_path):
  fields, message = CONFIG_VALUES[name]
  fields = {k: str(loop) if v == "{loop}" else v for k, v in fields.items()}
  config = ml_collections.ConfigDict({**tiny_config(2).to_dict(), **fields})
  workdir = tmp_path / "workdir"
  with pytest.raises(UsageError, match=re.escape(message.replace("{loop}", str(loop)))) as e:
    train.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()


def test_config_without_a_field_is_refused():
  fields = tiny_config(2).to_dict()
  del fields["ngf"]
  with pytest.raises(UsageError, match=r"config.ngf is missing"):
    configuration.validate(ml_collections.ConfigDict(fields))


def _all_damaged(case: pathlib.Path):
  for step in ("2", "4"):
    truncate_checkpoint_arrays(case / "run" / "checkpoints" / step)
  return folder_run_config(case / "images", num_train_steps=6)


def _dataset_grew(case: pathlib.Path):
  make_image_folder(case / "images" / "more", count=3, size=(40, 40), seed=7)
  return folder_run_config(case / "images", num_train_steps=6)


def _other_model(case: pathlib.Path):
  return folder_run_config(case / "images", num_train_steps=6, ngf=16)


def _other_model_no_config_json(case: pathlib.Path):
  (case / "run" / "config.json").unlink()
  return folder_run_config(case / "images", num_train_steps=6, ndf=16)


def _other_gan(case: pathlib.Path):
  return folder_run_config(case / "images", num_train_steps=6, loss="hinge")


def _run_from_before_r1(case: pathlib.Path):
  """A run whose config.json predates r1_weight: it trained without R1, the default has it."""
  path = case / "run" / "config.json"
  saved = json.loads(path.read_text())
  del saved["r1_weight"]
  path.write_text(json.dumps(saved))
  return folder_run_config(case / "images", num_train_steps=6)


def _config_json_not_an_object(case: pathlib.Path):
  """A crafted config.json (a list): read as unreadable, so the checkpoints' shapes decide."""
  (case / "run" / "config.json").write_text("[1, 2]")
  return folder_run_config(case / "images", num_train_steps=6, ndf=16)


def _config_json_long_value(case: pathlib.Path):
  """A crafted config.json with a 1 MB loss: refused without repeating it."""
  path = case / "run" / "config.json"
  saved = json.loads(path.read_text())
  saved["loss"] = "x" * 2**20
  path.write_text(json.dumps(saved))
  return folder_run_config(case / "images", num_train_steps=6)


def _workdir_is_a_file(case: pathlib.Path):
  shutil.rmtree(case / "run")
  (case / "run").write_text("not a folder")
  return folder_run_config(case / "images", num_train_steps=6)


def _cache_dir_is_a_file(case: pathlib.Path):
  return folder_run_config(case / "images", num_train_steps=6,
                        cache_dir=str(case / "run" / "config.json"))


WORKDIR_CASES = [
    (_all_damaged, RunError, "no checkpoint in {run}/checkpoints can be read (the newest, step 4: "),
    (_dataset_grew, UsageError, "the dataset now has 43 images; the run in {run} was trained on 40"),
    (_other_model, UsageError, "holds a run trained with config.ngf=8 (its config.json), this "
                               "config has 16"),
    (_other_gan, UsageError, "holds a run trained with config.loss='bce' (its config.json), this "
                             "config has 'hinge': resume it with --config.loss=bce, or use"),
    (_run_from_before_r1, UsageError, "holds a run trained with config.r1_weight=0.0 (its "
                                      "config.json), this config has 1.0: resume it with "
                                      "--config.r1_weight=0.0, or use another --workdir"),
    (_other_model_no_config_json, UsageError, "checkpoints/4 has d_batch_stats/BatchNorm_0/mean of "
                                              "shape (16,); this config's model has shape (32,)"),
    (_config_json_not_an_object, UsageError, "checkpoints/4 has d_batch_stats/BatchNorm_0/mean "
                                             "of shape (16,); this config's model has shape (32,)"),
    (_config_json_long_value, UsageError, "holds a run trained with another config.loss (its "
                                          "config.json): use another --workdir"),
    (_workdir_is_a_file, UsageError, "--workdir='{run}' cannot be written"),
    (_cache_dir_is_a_file, UsageError, "config.json' is not a folder"),
]


def _files(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(folder_run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  case = tmp_path / "case"
  shutil.copytree(folder_run, case, symlinks=True)
  return case


@pytest.mark.slow
@pytest.mark.parametrize("make,error,message", WORKDIR_CASES)
def test_bad_workdir_is_refused_and_left_as_it_was(folder_run, tmp_path, make, error, message):
  case = _copy(folder_run, tmp_path)
  config = make(case)
  before = _files(case)
  with pytest.raises(error) as e:
    train.train_and_evaluate(config, str(case / "run"))
  assert message.format(run=case / "run") in str(e.value) and "\n" not in str(e.value)
  assert len(str(e.value)) < 1000
  assert _files(case) == before


@pytest.mark.parametrize("step", [0, 5])
def test_gan_of_a_trained_run_is_kept_on_resume(tmp_path, step):
  """Another loss is refused once steps are trained; at step 0 (an imported model) it is not."""
  (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
  saved = default.get_config()
  saved.loss = "hinge"
  workdir_lib.write_config(saved, str(tmp_path))
  if step == 0:
    workdir_lib.check_same_gan(default.get_config(), str(tmp_path))
    return
  with pytest.raises(UsageError, match="config.loss='hinge' .* resume it with --config.loss=hinge"):
    workdir_lib.check_same_gan(default.get_config(), str(tmp_path))


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "config.json is not a config: a JSON object is needed"),
    ("{\"ngf\": ", "config.json cannot be read as JSON (JSONDecodeError)"),
    ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "config.json cannot be read"),
])
def test_crafted_config_json_is_refused_in_one_line(tmp_path, text, message):
  (tmp_path / "config.json").write_text(text, encoding="latin-1")
  with pytest.raises(UsageError, match=re.escape(message)) as e:
    sampling.sample_from_workdir(str(tmp_path))
  assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs,message", [
    ({"grid_size": 10**6}, "--grid_size=1000000 is out of range: 1 to 1,024"),
    ({"interpolation_frames": 10**6}, "--interpolation_frames=1000000 is out of range: 0 to 256"),
    ({"interpolation_frames": 1}, "an interpolation has 0 or at least 2 frames"),
    ({"num_images": 10**9}, "--num_images=1000000000 is out of range: 0 to 10,000"),
    ({"seed": 2**64}, "--sample_seed=18446744073709551616 is out of range: 0 to 2,147,483,647"),
    ({"seed": -1}, "--sample_seed=-1 is out of range: 0 to 2,147,483,647"),
    ({"which": "newest"}, "checkpoint='newest' is not 'latest' or 'best'"),
    ({"ema": True}, "was trained without a generator EMA"),
])
def test_bad_sample_request_is_refused_and_writes_nothing(folder_run, kwargs, message):
  before = _files(folder_run)
  with pytest.raises(UsageError, match=re.escape(message)):
    sampling.sample_from_workdir(str(folder_run / "run"), **kwargs)
  assert _files(folder_run) == before


@pytest.mark.slow
@pytest.mark.parametrize("port", [99999, -1, 0])
def test_port_out_of_range_is_refused(folder_run, port):
  with pytest.raises(UsageError, match=re.escape(f"--port={port} is not a port number (1 to 65535)")):
    serve.serve(str(folder_run / "run"), port=port)


# Through main.py: exit status, one line on stderr, nothing touched.
def _main(workdir: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "main.py"), f"--workdir={workdir}", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def _config_file(case: pathlib.Path, body: str) -> str:
  path = case / "my_config.py"
  path.write_text(body)
  return f"--config={path}"


@pytest.mark.slow
@pytest.mark.parametrize("args,status,message", [
    (["--config.g_learning_rate=inf"], 2, "config.g_learning_rate=inf must be positive and finite"),
    (["--config.num_steps=100"], 2, "--config.num_steps=100: the config has no field 'num_steps' "
                                    "(Did you mean \"num_train_steps\""),
    (["--config.batch_size=2.5"], 2, "--config.batch_size=2.5"),
    (["{syntax_error}"], 2, "line 1: invalid syntax"),
    (["--mode=sample", "--grid_size=1000000"], 2, "--grid_size=1000000 is out of range"),
    (["--mode=serve", "--port=99999"], 2, "--port=99999 is not a port number (1 to 65535)"),
    (["{all_damaged}"], 1, "no checkpoint in {run}/checkpoints can be read"),
    (["{other_model}"], 2, "holds a run trained with config.ngf=8"),
])
def test_main_exits_with_one_line_and_touches_nothing(folder_run, tmp_path, args, status, message):
  case = _copy(folder_run, tmp_path)
  images = case / "images"
  folder = ["--config.dataset=imagefolder", f"--config.data_dir={images}", "--config.channels=3",
            "--config.ngf=8", "--config.ndf=8", "--config.batch_size=16", "--config.evaluator=",
            "--config.num_train_steps=6"]
  expanded = []
  for arg in args:
    if arg == "{syntax_error}":
      expanded.append(_config_file(case, "def get_config(:\n"))
    elif arg == "{all_damaged}":
      _all_damaged(case)
      expanded += folder
    elif arg == "{other_model}":
      expanded += folder + ["--config.ngf=16"]
    else:
      expanded.append(arg)
  before = _files(case)
  result = _main(case / "run", *expanded)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-2000:]
  errors = [line for line in lines if line.startswith("error: ")]  # beside progress logs
  assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert message.format(run=case / "run") in errors[0], errors[0]
  assert _files(case) == before


# A workdir's config.json edited by hand or from a stranger: (field, value, what the one line
# says after the file's path). Each is refused by every way of opening a workdir.
TAMPERED_CONFIG_JSON = [
    ("image_size", 48, "config.image_size=48 is not supported; choose one of 32, 64, 128"),
    ("image_size", "64", "config.image_size='64' is a str; it must be a int"),
    ("channels", -1, "config.channels=-1 must be 1 or 3"),
    ("loss", "evil", "config.loss='evil' is not one of bce, hinge, lsgan, wgan_gp"),
    ("ngf", 1e9, "config.ngf=1000000000.0 is a float; it must be a int"),
    ("seed", None, "config.seed=None is a NoneType; it must be a int"),
    ("g_learning_rate", float("nan"), "config.g_learning_rate=nan must be positive and finite"),
    ("batch_size", 10**400, "... (401 characters) is too large (at most 65,536)"),
    ("loss", "x" * 10**6, "... (1,000,002 characters) is not one of bce"),
    ("a.b", 1, "'a.b' is not a field of configs/default.py"),
]


def _open_sample(run):
  sampling.sample_from_workdir(str(run))


def _open_eval(run):
  eval_run.evaluate_workdir(str(run))


def _open_page(run):
  serve.serve(str(run), port=1)  # refused before any socket is opened


def _open_api(run):
  dcgan_jax.load(str(run))


@pytest.mark.slow  # the session's folder_run
@pytest.mark.parametrize("field,value,message", TAMPERED_CONFIG_JSON)
@pytest.mark.parametrize("opener", [_open_sample, _open_eval, _open_page, _open_api])
def test_tampered_config_json_is_refused_in_one_line_by_every_reader(folder_run, tmp_path, field,
                                                                     value, message, opener):
  case = _copy(folder_run, tmp_path)
  path = case / "run" / "config.json"
  saved = json.loads(path.read_text())
  saved[field] = value
  path.write_text(json.dumps(saved))
  before = _files(case)
  with pytest.raises(UsageError) as e:
    opener(case / "run")
  text = str(e.value)
  assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text
  assert len(text) < 400  # a huge value is not repeated
  assert _files(case) == before


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "eval", "serve"])
def test_tampered_config_json_through_main_is_one_line_and_exit_2(folder_run, tmp_path, mode):
  case = _copy(folder_run, tmp_path)
  path = case / "run" / "config.json"
  saved = json.loads(path.read_text())
  saved["loss"] = "evil"
  path.write_text(json.dumps(saved))
  result = _main(case / "run", f"--mode={mode}", "--port=1")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      f"error: {path}: config.loss='evil' is not one of bce, hinge, lsgan, wgan_gp"]
