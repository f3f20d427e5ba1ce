"""The command line (`python main.py`, `dcgan-jax`): flags, and the mode they run.

Trains DCGAN, or samples from a trained one.

  python main.py                                   # the embedded default (MNIST digits)
  python main.py --config configs/celeba.py --workdir runs/celeba   # or --config celeba
  python main.py --mode sample --workdir runs/celeba --num_images 16 --interpolation_frames 16
  python main.py --mode eval --workdir runs/celeba
  python main.py --mode serve --workdir runs/celeba --port 8000

Several processes (hosts) train one run together with --coordinator_address, --num_processes
and --process_id, or with none of them under SLURM, Open MPI or --distributed (README).
"""

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dcgan_jax import configs
from dcgan_jax.errors import RunError, UsageError

FLAGS = flags.FLAGS


def define_flags() -> None:
  before = set(FLAGS)
  config_flags.DEFINE_config_file(
      "config", configs.preset_path("default"),
      "Training config: a preset's name (" + ", ".join(configs.PRESETS) + ") or a config "
      "file; fields are overridden with --config.<field>=<value>.",
      lock_config=True)
  flags.DEFINE_string("workdir", "workdir", "Where checkpoints, metrics and samples go.")
  flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "serve"],
                    "Train; sample from workdir; evaluate workdir's checkpoints; or serve a "
                    "web page that explores workdir's generator.")
  flags.DEFINE_integer("port", 8000, "serve mode: the port.")
  flags.DEFINE_string("host", "127.0.0.1", "serve mode: the address to listen on.")
  flags.DEFINE_integer("sample_seed", 0, "sample mode: the seed of the latent noise.")
  flags.DEFINE_integer("grid_size", 64, "sample mode: images in the grid.")
  flags.DEFINE_integer("num_images", 0, "sample mode: also write this many single PNGs.")
  flags.DEFINE_integer("interpolation_frames", 0,
                       "sample mode: also write a slerp from seed to seed + 1 in this many "
                       "frames, as a GIF and a PNG strip.")
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"],
                    "sample mode: the latest checkpoint or the best (workdir/best).")
  flags.DEFINE_bool("ema", None, "sample mode: G's EMA (the default where the run kept one, "
                    "config.g_ema_decay > 0); --noema: G itself.")
  flags.DEFINE_string("label", None,
                      "sample mode, a conditional run: the class to draw (its index, as in the "
                      "workdir's classes.json), or several: 0,3,7 (a grid row each). Default: "
                      "every class.")
  flags.DEFINE_enum("bn_mode", None, ["train", "eval"],
                    "sample and eval modes: BatchNorm with batch statistics or running "
                    "averages (default: the run's config.sample_bn_mode).")
  flags.DEFINE_enum("evaluator", None, ["classifier", "inception"],
                    "eval mode: the feature extractor (default: the run's config.evaluator).")
  flags.DEFINE_string("inception_weights", None,
                      "eval mode: path of pt_inception-2015-12-05-6726825d.pth.")
  flags.DEFINE_integer("eval_num_samples", None,
                       "eval mode: generated images (default: the run's config).")
  flags.DEFINE_string("coordinator_address", None,
                      "Several processes: host:port of process 0, where the others meet.")
  flags.DEFINE_integer("num_processes", None, "Several processes: how many in all.")
  flags.DEFINE_integer("process_id", None, "Several processes: this one's index, from 0.")
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() and let JAX find the processes "
                    "(Cloud TPU slices, Kubernetes; SLURM and Open MPI are found without it).")
  for name in sorted(set(FLAGS) - before):  # --help lists them, whichever script runs this
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def _exit_with(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _flag_error(e: Exception, argv: list[str]) -> str:
  """Formats one line for a bad flag, config file or config field."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if isinstance(e, flags.Error) and "Error whilst parsing config file" in str(e):
    return f"{lines[0].removesuffix(':')} ({lines[-1]})"  # the file's own error, last
  if isinstance(e, flags.Error):
    return lines[0]
  if isinstance(e, SyntaxError):
    return f"--config: {e.filename}, line {e.lineno}: {e.msg}"
  if "get_config" in str(e):
    return f"--config: the config file has no get_config() ({lines[0]})"
  if isinstance(e, OSError) or not isinstance(e, (AttributeError, KeyError)):
    return f"--config: cannot load the config file ({type(e).__name__}: {lines[-1] if lines else ''})"
  while e.args and isinstance(e.args[0], Exception):  # ml_collections wraps a KeyError
    e = e.args[0]
  lines = str(e.args[0] if e.args else e).splitlines() or [""]
  field = lines[0].strip("\"'")
  hint = next((line.strip() for line in lines[1:] if line.startswith("Did you mean")),
              "configs/default.py lists every field")
  given = [a for a in argv if a.startswith("--config.") and field in a]
  return f"{given[0] if given else '--config'}: the config has no field {field!r} ({hint})"


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses the flags with absl, with bad flags as one line on stderr and exit status 2."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.to_dict()  # loads the config file, which ml_collections does lazily
    return rest
  except Exception as e:  # pylint: disable=broad-except  # a config file can raise anything
    _exit_with(_flag_error(e, argv))


class _LibraryInfoFilter(pylogging.Filter):
  """Keeps warnings from every library but INFO lines from this project only."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "dcgan_jax" in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  # pylint: disable=g-import-not-at-top  # each mode loads only what it needs
  from dcgan_jax import checkpoint, device
  # pylint: enable=g-import-not-at-top
  checkpoint.silence_failed_read_reports()
  lower = {"sample": "--grid_size, --num_images or --interpolation_frames",
           "eval": "--eval_num_samples", "serve": "the other work on the device",
           "train": "config.batch_size"}[FLAGS.mode]

  try:
    multi = ("coordinator_address", "num_processes", "process_id", "distributed")
    if FLAGS.mode != "train" and any(FLAGS[name].present for name in multi):
      raise UsageError(f"--mode {FLAGS.mode} runs in one process: leave out "
                       "--coordinator_address, --num_processes, --process_id and --distributed")
    with device.out_of_memory_as_usage_error(f"in --mode {FLAGS.mode}", lower):
      _run_mode(FLAGS.mode)
  except UsageError as e:
    _exit_with(str(e))
  except RunError as e:
    _exit_with(str(e), status=1)


def _run_mode(mode: str) -> None:
  """Runs --mode; main() turns its errors into one line."""
  # pylint: disable=g-import-not-at-top  # each mode loads only what it needs
  if mode == "train":
    from dcgan_jax import parallel, train
    if parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.distributed) and not parallel.is_primary():
      logging.set_verbosity(logging.WARNING)  # process 0 logs for the run
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif mode == "sample":
    from dcgan_jax import sampling
    paths = sampling.sample_from_workdir(
        FLAGS.workdir, FLAGS.sample_seed, FLAGS.num_images, FLAGS.grid_size, FLAGS.bn_mode,
        FLAGS.interpolation_frames, FLAGS.checkpoint, FLAGS.ema,
        sampling.parse_labels(FLAGS.label))
    logging.info("wrote %s%s", paths[0],
                 f" and {len(paths) - 1} files beside it" if len(paths) > 1 else "")
  elif mode == "serve":
    from dcgan_jax import serve
    serve.serve(FLAGS.workdir, FLAGS.host, FLAGS.port)
  else:
    from dcgan_jax import eval_run
    report = eval_run.evaluate_workdir(FLAGS.workdir, FLAGS.evaluator, FLAGS.inception_weights,
                                       FLAGS.eval_num_samples, FLAGS.bn_mode)
    print(eval_run.format_report(report))
    logging.info("wrote %s", os.path.join(FLAGS.workdir, "eval.json"))
  # pylint: enable=g-import-not-at-top


def presets_as_paths(argv: list[str]) -> list[str]:
  """argv with a preset's name after --config (`--config celeba`, `--config=celeba`) replaced by
  the preset's file in the package; a file of that name in the working folder wins."""
  out = list(argv)
  for i, arg in enumerate(out[:-1]):
    if arg == "--config" and out[i + 1] in configs.PRESETS and not os.path.exists(out[i + 1]):
      out[i + 1] = configs.preset_path(out[i + 1])
  for i, arg in enumerate(out):
    name = arg.removeprefix("--config=")
    if name != arg and name in configs.PRESETS and not os.path.exists(name):
      out[i] = f"--config={configs.preset_path(name)}"
  return out


def run() -> None:
  """Runs the command line: `python main.py` and the `dcgan-jax` command."""
  sys.modules["__main__"].__doc__ = __doc__  # the usage that --help prints
  sys.argv = presets_as_paths(sys.argv)
  try:
    define_flags()  # ml_collections reads --config.<field> overrides from sys.argv here
  except Exception as err:  # pylint: disable=broad-except
    _exit_with(_flag_error(err, sys.argv))
  app.run(main, flags_parser=_parse_flags)
