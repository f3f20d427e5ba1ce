"""What bitwise reproducibility costs on a GPU, and which way of getting it holds.

  python benchmarks/determinism.py --batch-size 1024 --compute-dtype bfloat16

For one batch size and compute dtype, six fresh processes of benchmarks/throughput.py, each
compiling (and autotuning) anew, without the compilation cache: each trains --hash-steps steps
from the seed-0 state, hashes the whole state, then times its steps as throughput.py does.
  flag    config.deterministic True (XLA_FLAGS --xla_gpu_deterministic_ops=true, autotuning
          off): two processes
  off     config.deterministic False (XLA's autotuner picks its fastest kernels): two
          processes; the first writes the autotuner's picks to a file
  pinned  config.deterministic False, the autotuner's picks read from that file (and required
          complete): two processes
One JSON line per process (throughput.py's, with "mode" and "process"), then one per mode:
"bitwise_equal" (the two processes' state hashes agree; null where one gave none), both
ms_per_step and their mean. Every XLA flag is first tried on the installed jaxlib (a flag it
does not take is refused in one line). Other flags pass to throughput.py (--image-size, ...).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dcgan_jax import device  # noqa: E402
from dcgan_jax.errors import UsageError  # noqa: E402

MODES = ("flag", "off", "pinned")
_OWN_FLAGS = ("--hash-steps", "--child-timeout-s", "--impl", "--deterministic")


def mode_flags(mode: str, autotune_file: str, process: int) -> list[str]:
  """The XLA flags a mode's process starts with, beside throughput.py's --deterministic."""
  if mode == "off" and process == 0:
    return [f"{device.AUTOTUNE_DUMP_FLAG}={autotune_file}"]
  if mode == "pinned":
    return [f"{device.AUTOTUNE_LOAD_FLAG}={autotune_file}", f"{device.AUTOTUNE_COMPLETE_FLAG}=true"]
  return []


def child_env(xla_flags: list[str]) -> dict:
  """This process's environment for a child that compiles anew: no compilation cache, and
  XLA_FLAGS without the project's flags (throughput.py sets determinism itself) plus
  `xla_flags`."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if f.partition("=")[0] not in device.PROJECT_XLA_FLAGS]
  env["XLA_FLAGS"] = " ".join(kept + xla_flags)
  return env


def run_child(argv: list[str], env: dict, timeout_s: float) -> dict:
  """throughput.py's JSON line, or a line with 'error' saying why there is none."""
  try:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"),
                          *argv], capture_output=True, text=True, env=env, timeout=timeout_s,
                         check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"stopped after {timeout_s:g} s"}
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  if lines:
    return lines[-1]
  tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
  return {"error": f"exit status {out.returncode}: {tail}"}


def mode_line(mode: str, lines: list[dict], autotune_file: str) -> dict:
  """A mode's summary: whether its processes' states agree bit for bit, and their speed."""
  hashes = [l.get("state_sha256") for l in lines]
  ms = [l.get("ms_per_step") for l in lines]
  line = {"benchmark": "determinism", "mode": mode,
          "bitwise_equal": None if None in hashes else len(set(hashes)) == 1,
          "ms_per_step": ms,
          "mean_ms_per_step": None if None in ms else round(statistics.fmean(ms), 2)}
  if mode in ("off", "pinned"):
    line["autotune_results_bytes"] = (os.path.getsize(autotune_file)
                                      if os.path.exists(autotune_file) else 0)
  return line


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hash-steps", type=int, default=50,
                      help="steps from the fresh state before the state is hashed")
  parser.add_argument("--child-timeout-s", type=float, default=300,
                      help="the most seconds one process may take")
  args, passed = parser.parse_known_args(argv)
  if args.hash_steps <= 0:
    parser.error(f"--hash-steps {args.hash_steps} must be positive")
  own = [a for a in passed if a.partition("=")[0] in _OWN_FLAGS]
  if own:
    parser.error(f"{own[0]} is this benchmark's to set")
  with tempfile.TemporaryDirectory(prefix="dcgan_jax_autotune_") as tmp:
    autotune_file = os.path.join(tmp, "autotune_results.textproto")
    try:  # every flag, before any process starts
      device.require_xla_flags([f for mode in MODES for p in (0, 1)
                                for f in mode_flags(mode, autotune_file, p)],
                               "benchmarks/determinism.py")
    except UsageError as e:
      parser.error(str(e))
    for mode in MODES:
      lines = []
      for process in (0, 1):
        child = ["--impl", "jax", "--hash-steps", str(args.hash_steps),
                 "--deterministic", "1" if mode == "flag" else "0", *passed]
        line = run_child(child, child_env(mode_flags(mode, autotune_file, process)),
                         args.child_timeout_s)
        lines.append(line)
        print(json.dumps({**line, "benchmark": "determinism", "mode": mode,
                          "process": process}), flush=True)
      print(json.dumps(mode_line(mode, lines, autotune_file)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
