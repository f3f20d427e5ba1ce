"""The page of --mode serve: one HTML document with its style and script inline (it loads
nothing from elsewhere, so it works offline)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dcgan-jax</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }
  header { background: #1f2937; color: #fff; padding: 12px 20px; }
  header h1 { margin: 0; font-size: 20px; }
  header p { margin: 4px 0 0; font-size: 13px; color: #cbd5e1; }
  main { display: grid; grid-template-columns: minmax(320px, 1fr) minmax(320px, 1fr);
         gap: 16px; padding: 16px; }
  section { background: #fff; border-radius: 8px; padding: 14px; box-shadow: 0 1px 3px #0002; }
  section h2 { margin: 0 0 10px; font-size: 16px; }
  label { font-size: 13px; margin-right: 8px; }
  input[type=number] { width: 90px; }
  button { padding: 5px 12px; margin-right: 6px; cursor: pointer; }
  .images { margin-top: 10px; min-height: 64px; }
  .images img { image-rendering: pixelated; width: 100%; max-width: 400px; }
  #strip { max-width: 100%; }
  #error { color: #b91c1c; font-size: 13px; min-height: 18px; }
  table { border-collapse: collapse; font-size: 13px; }
  td { padding: 2px 10px 2px 0; }
</style>
</head>
<body>
<header>
  <h1>dcgan-jax</h1>
  <p id="run">loading...</p>
</header>
<main>
  <section>
    <h2>Samples</h2>
    <label>seed <input id="seed" type="number" min="0" value="0"></label>
    <label>images <input id="count" type="number" min="1" value="16"></label>
    <button id="new-seed">New seed</button><button id="show">Show</button>
    <label><input id="ema" type="checkbox" disabled> EMA</label>
    <label>checkpoint <select id="checkpoint"><option>latest</option></select></label>
    <label id="class-picker" hidden>class <select id="label"></select></label>
    <div class="images"><img id="grid" alt="generated images"></div>
  </section>
  <section>
    <h2>Interpolation</h2>
    <label>from seed <input id="seed-a" type="number" min="0" value="0"></label>
    <label>to seed <input id="seed-b" type="number" min="0" value="1"></label>
    <label>frames <input id="frames" type="number" min="2" value="8"></label>
    <button id="interpolate">Interpolate</button>
    <div class="images"><img id="strip" alt="interpolation"></div>
  </section>
  <section>
    <h2>Losses</h2>
    <div class="images"><img id="losses" alt="loss plot" src="/api/losses.png"></div>
  </section>
  <section>
    <h2>Metrics</h2>
    <table id="metrics"></table>
  </section>
</main>
<div id="error" style="padding: 0 16px 16px"></div>
<script>
const $ = (id) => document.getElementById(id);
let info = null;

function options() {
  const ema = $("ema").checked ? 1 : 0;
  return `checkpoint=${$("checkpoint").value}&ema=${ema}`;
}

// A conditional run's class: "" (every class in turn) or an index; an interpolation stays
// within one class (the first where every class is picked).
function labelArg(interpolation) {
  if (!info || info.classes.length === 0) return "";
  const picked = $("label").value;
  if (picked === "") return interpolation ? "&label=0" : "";
  return `&label=${picked}`;
}

async function load(img, url) {
  // Fetch first so that a 400 shows its message instead of a broken image.
  const response = await fetch(url);
  if (!response.ok) {
    const body = await response.json().catch(() => ({error: response.statusText}));
    $("error").textContent = body.error;
    return;
  }
  $("error").textContent = "";
  const old = img.src;
  img.src = URL.createObjectURL(await response.blob());
  img.dataset.url = url;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

function showGrid() {
  load($("grid"), `/api/grid.png?seed=${$("seed").value}&n=${$("count").value}&${options()}` +
       labelArg(false));
}

function showStrip() {
  load($("strip"), `/api/interpolation.png?seed_a=${$("seed-a").value}` +
       `&seed_b=${$("seed-b").value}&frames=${$("frames").value}&${options()}` +
       labelArg(true));
}

async function showMetrics() {
  const m = await (await fetch("/api/metrics")).json();
  const rows = [["logged rows", m.rows]];
  if (m.last) {
    for (const [k, v] of Object.entries(m.last)) {
      if (v !== null) rows.push([k, Number.isInteger(v) ? v : v.toPrecision(4)]);
    }
  }
  for (const [k, v] of Object.entries(m.best)) rows.push([`best ${k}`, v.toPrecision(4)]);
  $("metrics").innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
}

async function start() {
  info = await (await fetch("/api/info")).json();
  const steps = Object.entries(info.checkpoints).map(([k, v]) => `${k}: step ${v}`).join(", ");
  $("run").textContent = `${info.workdir} - ${info.image_size}x${info.image_size}x` +
      `${info.channels}, ${steps}, BatchNorm ${info.bn_mode}`;
  $("count").max = info.max_images;
  $("frames").max = info.max_frames;
  $("checkpoint").innerHTML = Object.keys(info.checkpoints)
      .map((k) => `<option>${k}</option>`).join("");
  $("ema").disabled = info.ema.length === 0;
  $("ema").checked = info.ema.length > 0;  // G's EMA where the run keeps one
  if (info.classes.length > 0) {  // class names are text from the run's folders: never HTML
    const every = document.createElement("option");
    every.value = "";
    every.textContent = "every class";
    $("label").appendChild(every);
    info.classes.forEach((name, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = `${i}: ${name}`;
      $("label").appendChild(option);
    });
    $("class-picker").hidden = false;
  }
  showGrid();
  showStrip();
  showMetrics();
}

$("new-seed").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * info.max_seed);
  showGrid();
});
$("show").addEventListener("click", showGrid);
$("interpolate").addEventListener("click", showStrip);
for (const id of ["ema", "checkpoint", "label"]) {
  $(id).addEventListener("change", () => { showGrid(); showStrip(); });
}
start();
</script>
</body>
</html>
"""
