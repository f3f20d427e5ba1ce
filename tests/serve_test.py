"""--mode serve: every endpoint over HTTP (status, type, PNG sizes, the 400s), one compiled
generator for every request, and the page in headless Chromium."""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from werkzeug.test import Client

from dcgan_jax import sampling, serve, train
from conftest import tiny_config

pytestmark = pytest.mark.slow  # trains a run and serves it

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 4-step run with G's EMA, its step-2 checkpoint also kept as 'best'."""
  path = tmp_path_factory.mktemp("served")
  config = tiny_config(4)
  config.checkpoint_every_steps = 2
  config.g_ema_decay = 0.5
  train.train_and_evaluate(config, str(path))
  shutil.copytree(path / "checkpoints" / "2", path / "best" / "2")
  return path


@pytest.fixture(scope="module")
def explorer(workdir):
  return serve.Explorer(str(workdir))


@pytest.fixture(scope="module")
def client(explorer):
  return Client(serve.make_app(explorer))


def _png(response) -> np.ndarray:
  assert response.status_code == 200, response.get_data(as_text=True)
  assert response.mimetype == "image/png"
  return np.asarray(Image.open(io.BytesIO(response.get_data())))


def test_page_is_one_offline_document(client):
  response = client.get("/")
  assert response.status_code == 200 and response.mimetype == "text/html"
  page = response.get_data(as_text=True)
  assert 'id="new-seed"' in page and 'id="grid"' in page and 'id="strip"' in page
  assert "http://" not in page and "https://" not in page  # no assets from elsewhere


@pytest.mark.parametrize("n,side", [(1, 36), (16, 4 * 34 + 2), (64, 8 * 34 + 2)])
def test_grid_has_n_images(client, n, side):
  assert _png(client.get(f"/api/grid.png?seed=5&n={n}")).shape == (side, side)


def test_grid_is_what_sample_mode_writes(client, workdir):
  [path] = sampling.sample_from_workdir(str(workdir), seed=7, grid_size=64)
  served = _png(client.get("/api/grid.png?seed=7&n=64"))
  np.testing.assert_array_equal(served, np.asarray(Image.open(path)))
  first = _png(client.get("/api/grid.png?seed=7&n=1"))  # the first image of the same batch
  np.testing.assert_array_equal(first, served[:36, :36])


def test_interpolation_strip(client):
  strip = _png(client.get("/api/interpolation.png?seed_a=3&seed_b=4&frames=8"))
  assert strip.shape == (36, 8 * 34 + 2)
  assert not np.array_equal(strip[2:34, 2:34], strip[2:34, -34:-2])  # the ends differ


def test_best_checkpoint_and_ema(client, explorer):
  assert explorer.info()["checkpoints"] == {"latest": 4, "best": 2}
  assert explorer.info()["ema"] == ["best", "latest"]
  latest = _png(client.get("/api/grid.png?seed=1&n=4&ema=0"))
  best = _png(client.get("/api/grid.png?seed=1&n=4&checkpoint=best&ema=0"))
  ema = _png(client.get("/api/grid.png?seed=1&n=4&ema=1"))
  assert not np.array_equal(latest, best) and not np.array_equal(latest, ema)
  # without ema: G's EMA, where the run keeps one
  np.testing.assert_array_equal(_png(client.get("/api/grid.png?seed=1&n=4")), ema)


@pytest.mark.parametrize("query,message", [
    ("/api/grid.png?seed=abc", "seed='abc' is not a whole number in ASCII digits"),
    ("/api/grid.png?seed=-1", "seed=-1 is out of range: 0 to 2147483647"),
    ("/api/grid.png?n=0", "n=0 is out of range: 1 to 64"),
    ("/api/grid.png?n=65", "n=65 is out of range: 1 to 64"),
    ("/api/grid.png?n=2.5", "n='2.5' is not a whole number in ASCII digits"),
    ("/api/interpolation.png?frames=1", "frames=1 is out of range: 2 to 16"),
    ("/api/interpolation.png?seed_b=x", "seed_b='x' is not a whole number in ASCII digits"),
    ("/api/grid.png?n=%2B5", "n='+5' is not a whole number in ASCII digits"),
    ("/api/grid.png?n=1_6", "n='1_6' is not a whole number in ASCII digits"),
    ("/api/grid.png?n=%205%20", "n=' 5 ' is not a whole number in ASCII digits"),
    ("/api/grid.png?n=%D9%A5", "n='\u0665' is not a whole number in ASCII digits"),
    ("/api/grid.png?n=%EF%BC%95", "n='\uff15' is not a whole number in ASCII digits"),
    ("/api/grid.png?seed=99999999999", "seed='99999999999' is not a whole number in ASCII "
     "digits"),
    ("/api/grid.png?n=4&n=8", "'n' is given 2 times"),
    ("/api/grid.png?ema=0&ema=1", "'ema' is given 2 times"),
    ("/api/grid.png?checkpoint=worst", "checkpoint='worst' is not 'latest' or 'best'"),
    ("/api/grid.png?ema=2", "ema='2' is not 0 or 1"),
])
def test_bad_parameters_get_400_with_the_reason(client, query, message):
  response = client.get(query)
  assert response.status_code == 400 and response.mimetype == "application/json"
  assert response.get_json() == {"error": message}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "BREW"])
def test_methods_other_than_get_and_head_get_405(client, method):
  response = client.open("/api/grid.png", method=method)
  assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD"
  assert client.head("/api/info").status_code == 200


@pytest.mark.parametrize("host,status", [
    ("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("LOCALHOST", 200),
    ("evil.example:8000", 400), ("evil.example", 400), ("localhost:9000", 400),
    ("127.0.0.2:8000", 400), ("localhost.evil.example:8000", 400)])
def test_on_loopback_only_loopback_host_headers_are_answered(explorer, host, status):
  client = Client(serve.make_app(explorer, serve.loopback_hosts("127.0.0.1", 8000)))
  response = client.get("/api/info", headers={"Host": host})
  assert response.status_code == status, response.get_data(as_text=True)
  if status == 400:
    assert "not this server's loopback address" in response.get_json()["error"]


def test_loopback_hosts_only_for_loopback_addresses():
  assert "localhost:80" in serve.loopback_hosts("localhost", 80)
  assert "[::1]:8080" in serve.loopback_hosts("::1", 8080)
  assert serve.loopback_hosts("0.0.0.0", 8000) is None
  assert serve.loopback_hosts("192.168.1.5", 8000) is None


def test_connections_are_bounded(explorer, monkeypatch):
  """Idle connections take at most max_connections threads; the next request is answered
  once they time out."""
  monkeypatch.setattr(serve._Handler, "timeout", 1.0)  # pylint: disable=protected-access
  server = serve.BoundedServer("127.0.0.1", 0, serve.make_app(explorer), max_connections=3)
  port = server.socket.getsockname()[1]
  loop = threading.Thread(target=server.serve_forever, daemon=True)
  loop.start()
  idle = []
  try:
    before = threading.active_count()
    for _ in range(20):
      idle.append(socket.create_connection(("127.0.0.1", port)))
    time.sleep(0.5)
    assert threading.active_count() - before <= 3
    body = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=60))
    assert body["image_size"] == 32
  finally:
    for sock in idle:
      sock.close()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("port,message", [
    (99999, "--port=99999 is not a port number (1 to 65535)"),
    (-1, "--port=-1 is not a port number (1 to 65535)"),
    (0, "--port=0 is not a port number (1 to 65535)")])
def test_ports_out_of_range_are_refused(explorer, port, message):
  with pytest.raises(serve.UsageError, match=re.escape(message)):
    serve.make_server(explorer, "127.0.0.1", port)


def test_a_port_in_use_is_one_line(explorer):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(serve.UsageError, match=f"--port={port}: cannot listen on 127.0.0.1:"
                       f"{port} \\(Address already in use\\)"):
      serve.make_server(explorer, "127.0.0.1", port)


def test_unknown_path_is_404(client):
  response = client.get("/api/nothing")
  assert response.status_code == 404 and "error" in response.get_json()


def test_metrics_and_loss_plot(client, workdir):
  info = client.get("/api/info").get_json()
  assert (info["image_size"], info["channels"], info["max_images"]) == (32, 1, 64)
  m = client.get("/api/metrics").get_json()
  assert m["rows"] == 2 and m["last"]["step"] == 4 and np.isfinite(m["last"]["loss_d"])
  assert _png(client.get("/api/losses.png")).ndim == 3


def test_every_request_uses_the_one_compiled_function(workdir):
  explorer = serve.Explorer(str(workdir))  # compiles at start
  client = Client(serve.make_app(explorer))
  before = sampling.traces()
  for seed in range(3):
    for n in (1, 5, 64):
      client.get(f"/api/grid.png?seed={seed}&n={n}&ema={seed % 2}")
    client.get(f"/api/interpolation.png?seed_a={seed}&frames={seed + 2}&checkpoint=best")
  assert sampling.traces() == before
  assert client.get("/api/info").get_json()["compilations"] == explorer.compilations <= 1


@pytest.mark.slow
def test_a_workdir_without_a_checkpoint_is_refused(tmp_path):
  result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--mode=serve",
                           f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --workdir={str(tmp_path)!r} has no config.json: train there first"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _chromium():
  """Selenium's Chrome driver on Debian's chromium, or a skip naming what is missing."""
  chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
  if not (chromium and driver):
    pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver; "
                ".ci/run installs them)")
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--window-size=1200,1000"):
    options.add_argument(flag)
  return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(condition, what: str):
  """condition()'s first true value, polled for up to 15 s."""
  for _ in range(300):
    value = condition()
    if value:
      return value
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def page_in_chromium(workdir):
  """Serves workdir (`main.py --mode serve` on a free port) and opens its page in headless
  Chromium; yields (browser, the page's URL); closes both."""
  port = _free_port()
  server = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--mode=serve",
                             f"--workdir={workdir}", f"--port={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  browser = None
  try:
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
      try:
        json.load(urllib.request.urlopen(url + "api/info", timeout=1))
        break
      except OSError:
        assert server.poll() is None, server.stderr.read()[-2000:]
        time.sleep(0.1)
    browser = _chromium()
    browser.get(url)
    yield browser, url
  finally:
    if browser is not None:
      browser.quit()
    server.terminate()
    server.wait(timeout=30)


# The URL of the grid's image once it has loaded, else null.
GRID_SHOWN = ("const g = document.getElementById('grid');"
              "return g.complete && g.naturalWidth > 0 ? g.dataset.url : null;")


@pytest.mark.slow
def test_page_in_chromium_shows_a_new_seed(workdir, tmp_path):
  # DCGAN_JAX_SERVE_WORKDIR (another trained run) and DCGAN_JAX_SCREENSHOT (where to copy the
  # screenshot) make the README's picture.
  workdir = os.environ.get("DCGAN_JAX_SERVE_WORKDIR", workdir)
  with page_in_chromium(workdir) as (browser, _):
    first_url = wait_for(lambda: browser.execute_script(GRID_SHOWN), "the first grid")
    assert "seed=0" in first_url and "ema=1" in first_url  # G's EMA: the run keeps one
    assert browser.find_element("id", "ema").is_selected()
    grid = browser.find_element("id", "grid")
    first = grid.screenshot_as_png
    browser.find_element("id", "new-seed").click()
    second_url = wait_for(lambda: (u := browser.execute_script(GRID_SHOWN)) != first_url and u,
                          "the new seed's grid")
    assert "seed=" in second_url and second_url != first_url
    wait_for(lambda: browser.execute_script(
        "return document.getElementById('strip').naturalWidth > 0 && "
        "document.getElementById('losses').naturalWidth > 0 && "
        "document.getElementById('metrics').rows.length > 3"), "the strip, plot and metrics")
    second = grid.screenshot_as_png
    assert first != second  # the images changed
    assert browser.find_element("id", "error").text == ""
    assert not browser.find_element("id", "class-picker").is_displayed()  # no classes
    shot = tmp_path / "serve_page.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("DCGAN_JAX_SCREENSHOT"):
      shutil.copy(shot, os.environ["DCGAN_JAX_SCREENSHOT"])


def test_out_of_memory_in_a_request_is_a_503_with_one_line(explorer, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top

  def out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1073741824 "
                                     "bytes.")

  monkeypatch.setattr(sampling, "generate_images", out_of_memory)
  response = Client(serve.make_app(explorer)).get("/api/grid.png?seed=123&n=4")
  assert response.status_code == 503
  error = response.get_json()["error"]
  assert error == ("out of memory on cpu (cpu) making /api/grid.png; 1.0 GiB asked at once: "
                   "lower n or frames")
