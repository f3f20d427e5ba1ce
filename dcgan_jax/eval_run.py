"""`--mode eval`: the metrics of a trained workdir's latest and best checkpoints, next to
the same metrics of held-out real images (the floor) and of an untrained generator."""

import os
import re

import ml_collections
import numpy as np

from dcgan_jax import configuration, errors, evaluation, input_pipeline, steps
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError, given


def eval_config(config: ml_collections.ConfigDict, workdir: str, evaluator: str | None,
                inception_weights: str | None, num_samples: int | None,
                bn_mode: str | None) -> ml_collections.ConfigDict:
  """Returns a copy of a workdir's run config with the evaluation settings given (None keeps
  the run's), checked; UsageError when the run has no evaluator and none is given."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field, value in (("evaluator", evaluator), ("inception_weights", inception_weights),
                       ("eval_num_samples", num_samples), ("sample_bn_mode", bn_mode)):
    if value is not None:
      config[field] = value
  if not config.evaluator:
    raise UsageError(f"{given('workdir', workdir)} was trained without an evaluator: give "
                     f"{given('evaluator', 'classifier')} (digits) or "
                     f"{given('evaluator', 'inception')} with {given('inception_weights')}")
  configuration.validate(config)
  return config


def evaluate_workdir(workdir: str, evaluator: str | None = None,
                     inception_weights: str | None = None, num_samples: int | None = None,
                     bn_mode: str | None = None) -> dict:
  """Evaluates the workdir's latest and best checkpoints (G, and its EMA where the run kept
  one), held-out real images where the dataset has them, and the untrained generator of the
  run's seed; writes the results to WORKDIR/eval.json and returns them."""
  config = eval_config(workdir_lib.load_config(workdir), workdir, evaluator, inception_weights,
                       num_samples, bn_mode)
  data = input_pipeline.load_images(config)
  class_names = workdir_lib.class_names(config, workdir)
  judge, held_out = evaluation.from_config(config, data, class_names)
  z = evaluation.eval_noise(config)
  results = {}
  if held_out is not None:
    results["real_held_out"] = {"images": len(held_out), **judge.of_images(
        held_out, evaluation.held_out_labels(config, len(data)), per_class=True)}
  gan = steps.gan_from_config(config, num_classes=len(class_names))
  results["untrained"] = {"step": 0, **evaluation.evaluate_state(
      judge, gan, steps.init_train_state(gan, config.seed), config, z, per_class=True)}
  for which in ("latest", "best"):
    try:
      _, gan, state, step = workdir_lib.restore(workdir, which)
    except UsageError:
      if which == "latest":
        raise
      continue  # a run without evaluation has no best checkpoint
    results[which] = {"step": step, **evaluation.evaluate_state(judge, gan, state, config, z,
                                                                per_class=True)}
  report = {"evaluator": config.evaluator, "generated_images": config.eval_num_samples,
            "reference_images": judge.num_real, "bn_mode": config.sample_bn_mode,
            "results": results}
  errors.write_json(os.path.join(workdir, "eval.json"), report, indent=2)
  return report


def format_report(report: dict) -> str:
  """Returns a plain table: one row per evaluated set, one column per metric (each class's
  accuracy and FID are in eval.json only)."""
  rows = report["results"]
  columns = sorted({k for r in rows.values() for k in r if k not in ("step", "images")
                    and not re.fullmatch(r"(ema_)?(class_accuracy|\w*intra_fid)_\d+", k)},
                   key=lambda k: (k.startswith("ema_"), k))
  lines = [f"{report['evaluator']} evaluator, {report['generated_images']} generated images "
           f"against {report['reference_images']} real ones (BatchNorm {report['bn_mode']})",
           "  ".join([f"{'':14s}", f"{'step':>7s}"] + [f"{c:>22s}" for c in columns])]
  for name, r in rows.items():
    step = str(r.get("step", "-"))
    cells = [f"{r[c]:22.5g}" if c in r and not np.isnan(r[c]) else f"{'':>22s}"
             for c in columns]
    lines.append("  ".join([f"{name:14s}", f"{step:>7s}"] + cells))
  return "\n".join(lines)
