"""--mode serve: a local web page to explore a trained generator.

Werkzeug (WSGI routing, requests, responses, a test client and a development server in one
small, well-kept Pallets package, with no further dependencies) serves one page and a few
endpoints. Every image comes from sampling.generate_images in batches of MAX_IMAGES latents
(as `--mode sample` makes its default grid), compiled once at start: requests change only
its arguments (the latents, and the parameters of the latest or best checkpoint or of G's
EMA, all of one shape), never its shapes, so nothing is traced again.

  GET /                                  the page (offline: no assets from elsewhere)
  GET /api/info                          the run: step, sizes, checkpoints, EMA, compilations
  GET /api/grid.png?seed=S&n=N           N images of seed S (the first N of its batch)
  GET /api/interpolation.png?seed_a=A&seed_b=B&frames=F   slerp from A's first latent to B's
  A conditional run's image endpoints take label=K (a class index of /api/info's classes): the
  grid of every class in turn without it; an interpolation stays within the class it names.
  GET /api/metrics                       metrics.csv: the last row, the best values, a count
  GET /api/losses.png                    the run's loss plot
  Every image endpoint also takes checkpoint=latest|best and ema=0|1 (default: G's EMA where
  the run keeps one).
"""

import ipaddress
import json
import math
import os
import re
import tempfile
import threading

import numpy as np
from absl import logging
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from dcgan_jax import device, images, metrics, sampling, steps
from dcgan_jax import workdir as workdir_lib
from dcgan_jax.errors import UsageError
from dcgan_jax.serve_page import PAGE

MAX_IMAGES = 64  # the compiled batch; a grid shows up to this many
MAX_FRAMES = 16
MAX_LABEL = 100_000  # above every run's classes (config.max_classes' bound)
MAX_CONNECTIONS = 16  # connections served at once, a thread each; more wait to be accepted
CONNECTION_TIMEOUT_S = 20.0  # an idle or slow connection is closed after this long
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class BadRequest(ValueError):
  """A request parameter out of range or not a number; its message is shown to the user."""


class Explorer:
  """The workdir's checkpoints and the one compiled generator function that serves them."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    config, self.gan, state, step = workdir_lib.restore(workdir, "latest")
    self.config, self.bn_mode = config, config.sample_bn_mode
    self.class_names = workdir_lib.class_names(config, workdir)
    self.states, self.ema = {}, {}
    self._add("latest", state, step)
    if os.path.isdir(workdir_lib.checkpoint_dir(workdir, "best")):
      _, _, best, best_step = workdir_lib.restore(workdir, "best")
      self._add("best", best, best_step)
    self._lock = threading.Lock()
    traces = sampling.traces()
    self._images(np.zeros((1, config.nz), np.float32), "latest", False)  # compiles
    self._compilations_before = traces

  @property
  def compilations(self) -> int:
    """Counts the compilations of the generating function since this page started."""
    return sampling.traces() - self._compilations_before

  def _add(self, which: str, state: steps.TrainState, step: int) -> None:
    self.states[which] = (self._view(state), step)
    self.ema[which] = self._view(state, ema=True) if state.g_ema_params is not None else None

  @staticmethod
  def _view(state: steps.TrainState, ema: bool = False) -> steps.TrainState:
    """What the generator reads, with no EMA field, so every view has one structure."""
    return state.replace(g_params=state.g_ema_params if ema else state.g_params,
                         g_ema_params=None, d_opt_state=None, g_opt_state=None,
                         d_params=None, d_batch_stats=None)

  def _state(self, which: str, ema: bool | None) -> steps.TrainState:
    """The view of a checkpoint: G's EMA where asked, or (ema None) where the run keeps one."""
    if which not in self.states:
      raise BadRequest(f"checkpoint={which!r}: this run has "
                       f"{' and '.join(sorted(self.states))} only")
    if ema is None:
      ema = self.ema[which] is not None
    if not ema:
      return self.states[which][0]
    if self.ema[which] is None:
      raise BadRequest("ema=1: this run kept no EMA of G (config.g_ema_decay is 0)")
    return self.ema[which]

  def _images(self, z_NxZ: np.ndarray, which: str, ema: bool | None,
              label: int | None = None) -> np.ndarray:
    """Generates uint8 images of N <= MAX_IMAGES latents in one batch of MAX_IMAGES (of class
    label, or a conditional run's classes in turn)."""
    state = self._state(which, ema)
    labels = None if label is None else np.full(len(z_NxZ), label, np.int32)
    with self._lock:
      return sampling.generate_images(self.gan, state, z_NxZ, MAX_IMAGES, self.bn_mode,
                                      labels_N=labels)

  def _label(self, label: int | None, needed: bool = False) -> int | None:
    """A request's class, checked against the run's."""
    if label is None:
      if needed and self.class_names:
        raise BadRequest("label: an interpolation of a conditional run stays within one class: "
                         f"give label=0 to {len(self.class_names) - 1}")
      return None
    if not self.class_names:
      raise BadRequest(f"label={label}: this run is unconditional: it has no classes")
    if not 0 <= label < len(self.class_names):
      raise BadRequest(f"label={label} is out of range: 0 to {len(self.class_names) - 1}")
    return label

  def grid(self, seed: int, n: int, which: str = "latest", ema: bool | None = None,
           label: int | None = None) -> bytes:
    """Returns the first n of the seed's MAX_IMAGES images (those of `--mode sample --grid_size
    64`; of class label, or of every class in turn, for a conditional run)."""
    label = self._label(label)
    z = sampling.fixed_noise(seed, MAX_IMAGES, self.config.nz, sampling.SAMPLE_SALT)
    pictures = self._images(z, which, ema, label)[:n]
    return images.png_bytes(images.make_grid(pictures, ncols=math.ceil(math.sqrt(n))))

  def interpolation(self, seed_a: int, seed_b: int, frames: int, which: str = "latest",
                    ema: bool | None = None, label: int | None = None) -> bytes:
    label = self._label(label, needed=True)
    z = sampling.interpolation_noise(seed_a, seed_b, frames, self.config.nz)
    return images.png_bytes(images.make_grid(self._images(z, which, ema, label), ncols=frames))

  def info(self) -> dict:
    c = self.config
    return {"workdir": os.path.abspath(self.workdir), "image_size": c.image_size,
            "channels": c.channels, "nz": c.nz, "bn_mode": self.bn_mode,
            "checkpoints": {k: step for k, (_, step) in self.states.items()},
            "ema": sorted(k for k, v in self.ema.items() if v is not None),
            "max_images": MAX_IMAGES, "max_frames": MAX_FRAMES, "max_seed": sampling.MAX_SEED,
            "compilations": self.compilations, "classes": list(self.class_names)}

  def metrics(self) -> dict:
    path = os.path.join(self.workdir, "metrics.csv")
    rows = metrics.read_metrics(path) if os.path.isfile(path) else []
    numeric = lambda v: float(v) if v not in ("", None) else None  # noqa: E731
    rows = [{k: numeric(v) for k, v in r.items()} for r in rows]
    best = {}
    for key in (rows[0] if rows else {}):
      values = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
      if values and ("fid" in key or "kid" in key):
        best[key] = min(values)
    return {"rows": len(rows), "last": rows[-1] if rows else None, "best": best}

  def losses_png(self) -> bytes:
    path = os.path.join(self.workdir, "losses.png")
    csv_path = os.path.join(self.workdir, "metrics.csv")
    if os.path.isfile(path) and (not os.path.isfile(csv_path)
                                 or os.path.getmtime(path) >= os.path.getmtime(csv_path)):
      with open(path, "rb") as f:
        return f.read()
    if not os.path.isfile(csv_path):
      raise NotFound("this run has no metrics.csv yet")
    with tempfile.TemporaryDirectory() as tmp:  # a run still training: plot its rows so far
      metrics.plot_losses(csv_path, os.path.join(tmp, "losses.png"))
      with open(os.path.join(tmp, "losses.png"), "rb") as f:
        return f.read()


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
  """Returns an integer parameter: ASCII digits with an optional leading minus (no sign, space,
  underscore or other digits, as Python's int() would take), within [low, high]."""
  raw = request.args.get(name, str(default))
  if not re.fullmatch(r"-?[0-9]{1,10}", raw):
    raise BadRequest(f"{name}={raw[:24]!r} is not a whole number in ASCII digits")
  value = int(raw)
  if not low <= value <= high:
    raise BadRequest(f"{name}={value} is out of range: {low} to {high}")
  return value


def _which(request: Request) -> tuple[str, bool | None]:
  which = request.args.get("checkpoint", "latest")
  if which not in ("latest", "best"):
    raise BadRequest(f"checkpoint={which!r} is not 'latest' or 'best'")
  ema = request.args.get("ema")  # absent: G's EMA where the run keeps one
  if ema not in (None, "0", "1"):
    raise BadRequest(f"ema={ema!r} is not 0 or 1")
  return which, None if ema is None else ema == "1"


def loopback_hosts(host: str, port: int) -> frozenset[str] | None:
  """Returns the Host header values to answer when listening on a loopback address (the loopback
  names, bare or with the port), so that another site cannot read the page through DNS
  rebinding; None (any Host) for other addresses."""
  try:
    loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    loopback = False
  if not loopback:
    return None
  return frozenset(_LOOPBACK_NAMES + tuple(f"{name}:{port}" for name in _LOOPBACK_NAMES))


def _check_request(request: Request, hosts: frozenset[str] | None) -> None:
  """Raises BadRequest for a Host this server does not answer and a repeated parameter."""
  if hosts is not None and request.host.lower() not in hosts:
    raise BadRequest(f"Host {request.host[:80]!r} is not this server's loopback address")
  for name in request.args:
    if len(request.args.getlist(name)) > 1:
      raise BadRequest(f"{name[:24]!r} is given {len(request.args.getlist(name))} times")


def make_app(explorer: Explorer, hosts: frozenset[str] | None = None):
  """Returns the WSGI application of the page and its endpoints: GET and HEAD only; with `hosts`,
  only requests whose Host header is one of them."""
  urls = Map([Rule("/", endpoint="page"), Rule("/api/info", endpoint="info"),
              Rule("/api/grid.png", endpoint="grid"),
              Rule("/api/interpolation.png", endpoint="interpolation"),
              Rule("/api/metrics", endpoint="metrics"), Rule("/api/losses.png", endpoint="losses")])
  png = lambda data: Response(data, mimetype="image/png",  # noqa: E731
                              headers={"Cache-Control": "no-store"})
  as_json = lambda obj, status=200: Response(json.dumps(obj), status=status,  # noqa: E731
                                             mimetype="application/json")

  def handle(request: Request, endpoint: str) -> Response:
    if endpoint == "page":
      return Response(PAGE, mimetype="text/html")
    if endpoint == "info":
      return as_json(explorer.info())
    if endpoint == "metrics":
      return as_json(explorer.metrics())
    if endpoint == "losses":
      return png(explorer.losses_png())
    which, ema = _which(request)
    label = (_int(request, "label", 0, 0, MAX_LABEL) if "label" in request.args else None)
    if endpoint == "grid":
      return png(explorer.grid(_int(request, "seed", 0, 0, sampling.MAX_SEED),
                               _int(request, "n", 16, 1, MAX_IMAGES), which, ema, label))
    return png(explorer.interpolation(_int(request, "seed_a", 0, 0, sampling.MAX_SEED),
                                      _int(request, "seed_b", 1, 0, sampling.MAX_SEED),
                                      _int(request, "frames", 8, 2, MAX_FRAMES), which, ema,
                                      label))

  @Request.application
  def app(request: Request) -> Response:
    if request.method not in ("GET", "HEAD"):
      return Response(json.dumps({"error": f"{request.method[:16]} is not allowed"}), status=405,
                      mimetype="application/json", headers={"Allow": "GET, HEAD"})
    try:
      _check_request(request, hosts)
      endpoint, _ = urls.bind_to_environ(request.environ).match()
      return handle(request, endpoint)
    except BadRequest as e:
      return as_json({"error": str(e)}, status=400)
    except HTTPException as e:
      return as_json({"error": e.description}, status=e.code)
    except Exception as e:  # pylint: disable=broad-except  # the device's memory: say so
      if not device.is_out_of_memory(e):
        raise
      return as_json({"error": device.out_of_memory_line(
          e, f"making {request.path[:64]}", "n or frames")}, status=503)

  return app


class _Handler(WSGIRequestHandler):
  timeout = CONNECTION_TIMEOUT_S


class BoundedServer(BaseWSGIServer):
  """Werkzeug's server with a thread per connection, at most `max_connections` at once: the
  accept loop waits for a free slot, so further connections queue in the listen backlog."""
  multithread = True

  def __init__(self, host: str, port: int, app, max_connections: int = MAX_CONNECTIONS):
    super().__init__(host, port, app, handler=_Handler)
    self.slots = threading.BoundedSemaphore(max_connections)

  def server_bind(self) -> None:
    """Binds, or raises UsageError (Werkzeug itself would print two lines and exit)."""
    try:
      super().server_bind()
    except OSError as e:
      self.server_close()
      host, port = self.server_address[:2]
      raise UsageError(f"--port={port}: cannot listen on {host}:{port} "
                       f"({e.strerror or e})") from None

  def process_request(self, request, client_address) -> None:
    self.slots.acquire()

    def run() -> None:
      try:
        self.finish_request(request, client_address)
      except Exception:  # pylint: disable=broad-except  # as socketserver reports them
        self.handle_error(request, client_address)
      finally:
        self.shutdown_request(request)
        self.slots.release()

    threading.Thread(target=run, daemon=True).start()


def _check_port(port: int) -> None:
  if not 1 <= port <= 65535:
    raise UsageError(f"--port={port} is not a port number (1 to 65535)")


def make_server(explorer: Explorer, host: str, port: int) -> BoundedServer:
  """Returns the server of the page on host:port; UsageError (one line) for a port out of range or
  one that cannot be listened on."""
  _check_port(port)
  try:
    return BoundedServer(host, port, make_app(explorer, loopback_hosts(host, port)))
  except (OSError, UnicodeError) as e:  # an address that does not resolve
    why = getattr(e, "strerror", None) or str(e)
    raise UsageError(f"--port={port}: cannot listen on {host}:{port} ({why})") from None


def serve(workdir: str, host: str = "127.0.0.1", port: int = 8000) -> None:
  """Serves the page until interrupted; refuses a workdir without a checkpoint."""
  _check_port(port)  # before the checkpoints load
  explorer = Explorer(workdir)
  server = make_server(explorer, host, port)
  logging.info("serving %s (step %d) on http://%s:%d/", workdir,
               explorer.states["latest"][1], host, port)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
