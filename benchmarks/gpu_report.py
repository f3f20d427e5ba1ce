"""The GPU report: every figure of a GPU measurement, in one command, within a time budget.

  python benchmarks/gpu_report.py --out gpu_report.jsonl     # 9 minutes at most (--budget-s)

Stages, each command in its own process, in this order (--stages picks some):
  throughput   benchmarks/throughput.py at 64x64x3, ngf = ndf = 64: batch 128 and 1024 in
               float32 (dcgan-jax, PyTorch eager and torch.compile where torch is installed)
  hlo          benchmarks/hlo.py: one training step's optimized HLO with G's `vjp` and `xla`
               forms, written beside --out, and whether cuDNN's backward-data and
               backward-filter convolutions appear in it
  determinism  benchmarks/determinism.py at batch 128 and 1024, float32 and bfloat16: dcgan-jax
               with config.deterministic on, off, and off with autotuning pinned (read from a
               file written by a process before), two fresh processes each; their speed and
               whether their states agree bit for bit after 50 steps
  sweep        benchmarks/throughput.py --sweep at batch 1024: every upconv x downconv form
  default      the embedded default end to end (`python main.py` in a new workdir): wall time and
               its final and best classifier FIDs, G and its EMA
  epoch        benchmarks/epoch.py: one epoch of 202,599 synthetic 64x64x3 images, twice
  tests        the fast tests (`pytest -m "not slow"`) on this machine's JAX backend
All the stages take longer than one call of 10 minutes (estimated from the H200's compile and
step times: throughput, hlo and determinism about 9 minutes): what the budget skips says so in
its line, and `--stages sweep,default,epoch,tests` measures the rest in a call of its own.

Every JSON line of every stage goes to --out with its "stage"; a command that fails, or is
stopped when the budget runs out, leaves a line saying so, and the report goes on. At the
end it prints one Markdown table of everything. It starts wherever Python has JAX: the
packages a stage needs beyond it (ml_collections; tensorflow-datasets only for the
tests of tfds sources) are checked first and named, with the command that installs them.
--tiny runs the same stages on tiny models (a smoke test on a CPU).
"""

import argparse
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("throughput", "hlo", "determinism", "sweep", "default", "epoch", "tests")
# What the stages import beyond the Python standard library (module: pip name).
NEEDED = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
          "ml_collections": "ml-collections", "absl": "absl-py", "numpy": "numpy",
          "PIL": "pillow"}
_KILL_GRACE_S = 10


@dataclass
class Stage:
  """A command of a stage and the most seconds it may take (less if the budget is shorter)."""
  name: str
  setting: str
  argv: list[str]
  cap_s: float
  lines: list[dict] = field(default_factory=list)


def missing_modules() -> list[str]:
  """The pip names of NEEDED's modules that this Python cannot import."""
  missing = []
  for module, name in NEEDED.items():
    try:
      found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
      found = False
    if not found:
      missing.append(name)
  return missing


def plan(args, workdir_root: str, hlo_dir: str) -> list[Stage]:
  """The stages' commands, full size or (--tiny) on tiny models; the hlo stage writes its
  files into hlo_dir."""
  py, bench = sys.executable, os.path.join(ROOT, "benchmarks")
  throughput = [py, os.path.join(bench, "throughput.py")]
  if args.tiny:
    model = ["--image-size", "32", "--channels", "1", "--ngf", "4", "--ndf", "4"]
    timing = ["--steps", "2", "--windows", "2", "--warmup", "2", "--steps-per-dispatch", "2"]
    small, large, impls, hash_steps = 4, 8, "jax,torch-eager", "4"
    epoch = ["--num-images", "200", "--image-size", "32", "--channels", "1", "--batch-size",
             "16", "--ngf", "4", "--ndf", "4", "--steps-per-dispatch", "4"]
    default = ["--config.num_train_steps=4", "--config.ngf=4", "--config.ndf=4",
               "--config.eval_every_steps=2", "--config.eval_num_samples=20",
               "--config.log_every_steps=2", "--config.sample_every_steps=4",
               "--config.checkpoint_every_steps=4", "--config.steps_per_dispatch=2"]
  else:  # one compiled length per process: warm-up and windows in whole calls of 25 steps
    model = ["--image-size", "64", "--channels", "3", "--ngf", "64", "--ndf", "64"]
    timing = ["--steps", "25", "--windows", "3", "--warmup", "25", "--steps-per-dispatch", "25"]
    small, large, impls, hash_steps, epoch, default = 128, 1024, "all", "50", [], []
  t = throughput + model + timing
  # the hashed steps from the fresh state warm each process up
  hashed = [py, os.path.join(bench, "determinism.py"), *model, *timing, "--warmup", "0",
            "--hash-steps", hash_steps]
  stages = [
      Stage("throughput", f"batch {small}, float32", t + ["--impl", impls, "--batch-size",
                                                          str(small)], 150),
      Stage("throughput", f"batch {large}, float32", t + ["--impl", impls, "--batch-size",
                                                          str(large)], 150),
      Stage("hlo", f"batch {small}, float32, one training step",
            [py, os.path.join(bench, "hlo.py"), *model, "--batch-size", str(small),
             "--upconv-impls", "vjp,xla", "--out-dir", hlo_dir], 90),
      *[Stage("determinism", f"batch {batch}, {dtype}",
              hashed + ["--batch-size", str(batch), "--compute-dtype", dtype], 150)
        for batch in (small, large) for dtype in ("float32", "bfloat16")],
      Stage("sweep", f"batch {large}, float32, every form",
            t + ["--sweep", "--batch-size", str(large)], 300),
      Stage("default", "python main.py", [py, os.path.join(ROOT, "main.py"), "--workdir",
                                          os.path.join(workdir_root, "default"), *default], 150),
      Stage("epoch", "celeba preset, synthetic images",
            [py, os.path.join(bench, "epoch.py"), "--tmp-dir", workdir_root, *epoch], 150),
      Stage("tests", "pytest -m 'not slow'",
            [py, "-m", "pytest", "-o", "addopts=", "-v", "-p", "no:cacheprovider", "-m",
             "not slow",  # in one process (no pytest-xdist workers sharing the GPU)
             *args.pytest_args.split()], 600),
  ]
  return [s for s in stages if s.name in args.stages]


def run(argv: list[str], timeout_s: float, env: dict) -> tuple[int | None, str, str]:
  """Runs a command in its own process group; (exit status or None if stopped at timeout_s,
  stdout, stderr). A stopped command's whole group is killed: no child keeps the GPU."""
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=max(timeout_s, 1))
    return proc.returncode, out, err
  except subprocess.TimeoutExpired:
    for sig in (signal.SIGTERM, signal.SIGKILL):
      try:
        os.killpg(proc.pid, sig)
      except ProcessLookupError:
        break
      try:
        out, err = proc.communicate(timeout=_KILL_GRACE_S)
        break
      except subprocess.TimeoutExpired:
        continue
    else:
      out, err = "", ""
    return None, out or "", err or ""


def default_run_line(workdir: str) -> dict:
  """The embedded default's figures from its metrics.csv: steps, final and best FIDs."""
  with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  line = {"steps": int(rows[-1]["step"])}
  for who, column in (("g", "classifier_fid"), ("ema", "ema_classifier_fid")):
    evaluated = [(float(r[column]), int(r["step"])) for r in rows if r.get(column)]
    if evaluated:
      best = min(evaluated)
      line[who] = {"final_fid": evaluated[-1][0], "best_fid": best[0], "best_step": best[1]}
  return line


def test_run_line(stdout: str) -> dict:
  """Counts of pytest -v's per-test outcomes (also of a run stopped early) and the failures."""
  outcomes = re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", stdout,
                        re.MULTILINE)
  counts = {}
  for _, outcome in outcomes:
    counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
  summary = [l for l in stdout.splitlines() if re.match(r"=+ .*(passed|failed|error).* =+$", l)]
  return {**counts, "failures": [t for t, o in outcomes if o in ("FAILED", "ERROR")],
          "summary": summary[-1].strip("= ") if summary else None}


def run_stage(stage: Stage, timeout_s: float, env: dict) -> None:
  """Runs a stage's command and keeps its lines (each with stage and setting) in stage.lines."""
  t0 = time.monotonic()
  status, out, err = run(stage.argv, timeout_s, env)
  wall_s = round(time.monotonic() - t0, 1)
  head = {"stage": stage.name, "setting": stage.setting}
  lines = []
  if stage.name == "tests":
    lines = [{**test_run_line(out), "wall_s": wall_s}]
  elif stage.name == "default":
    try:
      lines = [{**default_run_line(stage.argv[stage.argv.index("--workdir") + 1]),
                "wall_s": wall_s}] if status == 0 else []
    except (OSError, KeyError, ValueError, IndexError) as e:
      lines = [{"error": f"metrics.csv: {type(e).__name__}: {e}"}]
  else:
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  if status is None:
    lines.append({"error": f"stopped after {wall_s} s: the report's budget ran out"})
  elif status != 0:
    tail = [l for l in err.strip().splitlines() if l.strip()][-1:] or [""]
    lines.append({"error": f"exit status {status}: {tail[0][:300]}"})
  stage.lines = [{**head, **l} for l in lines]


def machine_line(env: dict) -> dict:
  """JAX's devices and the libraries' versions, read in a child (the report itself never starts
  a backend: it would hold GPU memory that the stages need)."""
  code = ("import json, jax\n"
          "d = jax.devices()\n"
          "out = {'backend': jax.default_backend(), 'devices': [x.device_kind for x in d],"
          " 'versions': {'jax': jax.__version__}}\n"
          "try:\n  import torch\n  out['versions']['torch'] = torch.__version__\n"
          "except ImportError:\n  pass\n"
          "print(json.dumps(out))\n")
  status, out, err = run([sys.executable, "-c", code], 120, env)
  if status != 0:
    return {"stage": "machine", "error": (err.strip().splitlines() or ["no output"])[-1][:300]}
  return {"stage": "machine", **json.loads(out.strip().splitlines()[-1]),
          "date": time.strftime("%Y-%m-%d")}


def _fmt(x, digits=2) -> str:
  return "" if x is None else f"{x:,.{digits}f}"


def describe(line: dict) -> tuple[str, str]:
  """The table's 'what' and 'result' cells of a line."""
  what = line.get("setting", "")
  if "error" in line or "skipped" in line:
    return f"{what} {line.get('impl', '')}".strip(), line.get("error") or line["skipped"]
  stage = line["stage"]
  if stage == "determinism" and "bitwise_equal" in line:
    equal = {True: "yes", False: "NO", None: "unknown"}[line["bitwise_equal"]]
    return (f"{what}: {line['mode']}, 2 fresh processes",
            f"bitwise equal after the hashed steps: {equal}; "
            f"{_fmt(line['mean_ms_per_step'])} ms per step (mean)")
  if stage == "hlo":
    targets = ", ".join(f"{k} x{v}" for k, v in line["custom_call_targets"].items()) or "none"
    return (f"{what}: {line['upconv_impl']}/{line['downconv_impl']}",
            f"backward-input {'yes' if line['cudnn_backward_input'] else 'no'}, backward-filter "
            f"{'yes' if line['cudnn_backward_filter'] else 'no'}; custom calls: {targets}; "
            f"{line['dilated_input_convolutions']} convolutions over a dilated input, "
            f"{line['interior_padded_pads']} interior-padded pads")
  if stage in ("throughput", "sweep", "determinism"):
    forms = (f"{line['upconv_impl']}/{line['downconv_impl']}" if line["impl"] == "jax"
             else "")
    if stage == "determinism":
      forms += f", {line['mode']}, process {line['process']}"
    cell = (f"{_fmt(line['ms_per_step'])} ms, {_fmt(line['images_per_s'], 0)} img/s, "
            f"{_fmt(line['achieved_tflops'], 1)} TFLOP/s")
    if line.get("flop_fraction") is not None:
      cell += f" ({line['flop_fraction']:.1%} of {line['peak_tflops']:g})"
    if line.get("state_sha256"):
      cell += f"; state {line['state_sha256'][:12]} after {line['hash_steps']} steps"
    return f"{what}: {line['impl']} {forms}".strip(), cell
  if stage == "epoch":
    return (f"{what}, repeat {line['repeat']} ({line['num_images']:,} images)",
            f"{_fmt(line['wall_s'], 1)} s wall, {_fmt(line['loop_images_per_s'], 0)} img/s "
            f"in the loop, {_fmt(line['epoch_s_at_loop_rate'])} s per epoch at that rate")
  if stage == "default":
    fids = "; ".join(f"{who} FID {_fmt(line[who]['final_fid'])} (best "
                     f"{_fmt(line[who]['best_fid'])} at {line[who]['best_step']:,})"
                     for who in ("g", "ema") if who in line)
    return what, f"{_fmt(line['wall_s'], 1)} s, {line['steps']:,} steps; {fids}"
  if stage == "tests":
    failures = ", ".join(line["failures"][:10])
    return what, (f"{line.get('passed', 0)} passed, {line.get('failed', 0)} failed, "
                  f"{line.get('skipped', 0)} skipped, {line.get('error', 0)} errors in "
                  f"{line['wall_s']} s" + (f"; failed: {failures}" if failures else ""))
  if stage == "machine":
    return "machine", (f"{', '.join(sorted(set(line['devices'])))} ({line['backend']}), "
                       + ", ".join(f"{k} {v}" for k, v in line["versions"].items()))
  return what, json.dumps(line)


def table(lines: list[dict]) -> str:
  rows = ["| stage | what | result |", "|---|---|---|"]
  for line in lines:
    what, result = describe(line)
    rows.append(f"| {line['stage']} | {what} | {result} |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="gpu_report.jsonl", help="every JSON line goes here")
  parser.add_argument("--hlo-dir", default="",
                      help="where the hlo stage's files go (default: beside --out)")
  parser.add_argument("--budget-s", type=float, default=540,
                      help="seconds for all stages; a stage is stopped when they run out")
  parser.add_argument("--stages", default=",".join(STAGES),
                      help=f"a comma-separated subset of {', '.join(STAGES)}")
  parser.add_argument("--pytest-args", default="",
                      help="the tests stage's selection (default: every fast test)")
  parser.add_argument("--tiny", action="store_true", help="tiny models: a smoke test")
  args = parser.parse_args(argv)
  args.stages = args.stages.split(",")
  unknown = [s for s in args.stages if s not in STAGES]
  if unknown:
    parser.error(f"--stages {unknown[0]!r} is not one of {', '.join(STAGES)}")
  if args.budget_s <= 0:
    parser.error(f"--budget-s {args.budget_s} must be positive")
  missing = missing_modules()
  if missing:
    parser.error(f"this Python lacks {', '.join(missing)}: pip install {' '.join(missing)} "
                 "(offline: from wheels brought along, with --no-index --find-links DIR)")

  hlo_dir = args.hlo_dir or os.path.splitext(args.out)[0] + "_hlo"
  deadline = time.monotonic() + args.budget_s
  root = tempfile.mkdtemp(prefix="dcgan_jax_gpu_report_")
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=os.path.join(root, "xla_cache"))
  if not args.tiny:  # the default trains its digit classifier as a first run does
    env["XDG_CACHE_HOME"] = os.path.join(root, "cache")
  lines = [machine_line(env)]
  try:
    with open(args.out, "w") as out:
      out.write(json.dumps(lines[0]) + "\n")
      for stage in plan(args, root, hlo_dir):
        left = deadline - time.monotonic()
        if left < 5:
          stage.lines = [{"stage": stage.name, "setting": stage.setting,
                          "skipped": "the report's budget ran out before it"}]
        else:
          run_stage(stage, min(stage.cap_s, left), env)
        for line in stage.lines:
          out.write(json.dumps(line) + "\n")
          out.flush()
          print(json.dumps(line), file=sys.stderr, flush=True)
        lines += stage.lines
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(table(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
