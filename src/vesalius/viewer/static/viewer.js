// Vesalius viewer: the case list (sortable) and a NiiVue view of the chosen case's image and label overlays.
// window.vesalius exposes the state for tests: ready (the chosen case is drawn), caseIndex, error (of the last load).
// A case the server marks "broken" (a file missing or unreadable) is flagged in the list; the others still work.
"use strict";

const WINDOWS = { lung: [-600, 1500], abdomen: [40, 400], brain: [40, 80], bone: [400, 1800] }; // level, width (HU)
const OPACITY = { prediction: 0.5, reference: 0.35 };
const state = { cases: [], columns: [], sortKey: null, sortDir: 1, current: -1, nv: null, palette: [], kinds: [] };
window.vesalius = { ready: false, caseIndex: -1, error: null };

const $ = (id) => document.getElementById(id);

function message(text) {
  $("message").textContent = text;
}

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return response.json();
}

function metricColumns(cases) {
  const seen = [];
  for (const c of cases) for (const key of Object.keys(c.metrics)) if (!seen.includes(key)) seen.push(key);
  return seen;
}

function cellValue(c, key) {
  if (key === "id") return c.id;
  if (key === "group") return c.group;
  return c.metrics[key];
}

function formatValue(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "number" ? value.toFixed(3) : String(value);
}

function renderTable() {
  const keys = ["id", "group", ...state.columns];
  const head = document.createElement("tr");
  for (const key of keys) {
    const th = document.createElement("th");
    th.textContent = key === "id" ? "case" : key;
    if (state.sortKey === key) th.textContent += state.sortDir > 0 ? " \u25b2" : " \u25bc";
    th.dataset.key = key;
    th.addEventListener("click", () => sortBy(key));
    head.appendChild(th);
  }
  $("cases").tHead.replaceChildren(head);
  const body = $("cases").tBodies[0];
  body.replaceChildren();
  for (const c of sortedCases()) {
    const tr = document.createElement("tr");
    tr.dataset.index = c.index;
    if (c.index === state.current) tr.classList.add("selected");
    if (c.broken) tr.classList.add("broken");
    for (const key of keys) {
      const td = document.createElement("td");
      const value = cellValue(c, key);
      td.textContent = formatValue(value);
      if (typeof value === "number") td.className = "n";
      if (key === "id" && c.broken) {
        const mark = document.createElement("span");
        mark.className = "broken-mark";
        mark.textContent = c.broken;
        mark.title = "this case's files are missing or cannot be read; see the server's log";
        td.append(" ", mark);
      }
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => loadCase(c.index));
    body.appendChild(tr);
  }
}

function sortedCases() {
  const key = state.sortKey;
  if (!key) return state.cases;
  return [...state.cases].sort((a, b) => {
    const x = cellValue(a, key), y = cellValue(b, key);
    if (x === undefined) return 1;
    if (y === undefined) return -1;
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return state.sortDir * order;
  });
}

function sortBy(key) {
  state.sortDir = state.sortKey === key ? -state.sortDir : 1;
  state.sortKey = key;
  renderTable();
}

function labelName(c, value) {
  if (value === 0) return "background";
  return c.labels[String(value)] ?? `label ${value}`;
}

function labelColormap(c) {
  const values = Object.keys(c.labels).map(Number);
  const top = values.length ? Math.max(...values) : 255;
  const cmap = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (let v = 0; v <= top; v++) {
    const [r, g, b] = v === 0 ? [0, 0, 0] : state.palette[(v - 1) % state.palette.length];
    cmap.R.push(r);
    cmap.G.push(g);
    cmap.B.push(b);
    cmap.A.push(v === 0 ? 0 : 255);
    cmap.I.push(v);
    cmap.labels.push(labelName(c, v));
  }
  return cmap;
}

function applyLayout(is2D) {
  const nv = state.nv;
  const layout = is2D ? "axial" : $("layout").value;
  $("layout").disabled = is2D;
  nv.opts.multiplanarShowRender = niivue.SHOW_RENDER.ALWAYS;
  const types = {
    multi: nv.sliceTypeMultiplanar,
    axial: nv.sliceTypeAxial,
    coronal: nv.sliceTypeCoronal,
    sagittal: nv.sliceTypeSagittal,
    render: nv.sliceTypeRender,
  };
  nv.setSliceType(types[layout]);
}

function applyWindow(low, high) {
  const image = state.nv.volumes[0];
  image.cal_min = low;
  image.cal_max = high;
  state.nv.updateGLVolume();
  $("cal-min").value = +low.toPrecision(6);
  $("cal-max").value = +high.toPrecision(6);
}

function overlayControls(c) {
  const box = $("overlays");
  box.replaceChildren();
  state.kinds.forEach((kind, index) => {
    if (kind === "image") return;
    const label = document.createElement("label");
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.checked = true;
    toggle.id = `show-${kind}`;
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "0";
    slider.max = "1";
    slider.step = "0.05";
    slider.value = String(OPACITY[kind]);
    slider.id = `opacity-${kind}`;
    const update = () => state.nv.setOpacity(index, toggle.checked ? Number(slider.value) : 0);
    toggle.addEventListener("change", update);
    slider.addEventListener("input", update);
    label.append(toggle, ` ${kind} `, slider);
    box.appendChild(label);
  });
  const legend = $("legend");
  legend.replaceChildren();
  for (const [value, name] of Object.entries(c.labels)) {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = state.palette[(Number(value) - 1) % state.palette.length];
    swatch.style.background = `rgb(${r},${g},${b})`;
    legend.append(swatch, `${value}: ${name}`);
  }
}

function showLocation(data) {
  const c = state.cases[state.current];
  if (!c || !data || !data.mm) return;
  const [x, y, z] = data.mm;
  const parts = [`LPS ${(-x).toFixed(1)}, ${(-y).toFixed(1)}, ${z.toFixed(1)} mm`];
  if (data.vox) parts.push(`voxel ${Array.from(data.vox).join(", ")}`);
  (data.values || []).forEach((entry, index) => {
    const kind = state.kinds[index];
    if (kind === "image") parts.push(`value ${formatValue(entry.value)}`);
    else if (kind) parts.push(`${kind}: ${labelName(c, Math.round(entry.value))}`);
  });
  $("location").textContent = parts.join(" | ");
}

async function loadCase(index) {
  const c = state.cases[index];
  if (!c || !state.nv) return;
  window.vesalius.ready = false;
  window.vesalius.error = null;
  state.current = index;
  renderTable();
  history.replaceState(null, "", `#case=${index}`);
  $("case-title").textContent = `${c.group} / ${c.id}`;
  if (!c.volumes.includes("image")) {
    $("gl").style.visibility = "hidden"; // not the previous case's image under this one's title
    message(`cannot show ${c.id}: ${c.broken || "no image"}`);
    return;
  }
  message("loading ...");
  try {
    const volumes = c.volumes.map((kind) => ({
      url: `/api/cases/${index}/${kind}.nii.gz`,
      name: `${c.id}_${kind}.nii.gz`,
      opacity: kind === "image" ? 1 : OPACITY[kind],
    }));
    await state.nv.loadVolumes(volumes);
    if (state.current !== index) return; // another case was chosen meanwhile
    state.kinds = c.volumes;
    const cmap = labelColormap(c);
    for (let v = 1; v < state.nv.volumes.length; v++) state.nv.volumes[v].setColormapLabel(cmap);
    state.nv.updateGLVolume();
    const image = state.nv.volumes[0];
    const is2D = image.dims[3] <= 1;
    overlayControls(c);
    $("window-preset").value = "auto";
    applyWindow(image.cal_min, image.cal_max);
    applyLayout(is2D);
    $("gl").style.visibility = "";
    state.nv.drawScene();
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    message("");
    window.vesalius.caseIndex = index;
    window.vesalius.ready = true;
  } catch (error) {
    if (state.current !== index) return;
    window.vesalius.error = String(error);
    $("gl").style.visibility = "hidden";
    message(`cannot show ${c.id}: ${error}`);
    if (!c.broken) {
      c.broken = "unreadable";
      renderTable();
    }
  }
}

async function main() {
  const status = await getJson("/api/status");
  $("title").textContent = status.title;
  state.palette = status.palette;
  state.cases = (await getJson("/api/cases")).cases;
  state.columns = metricColumns(state.cases);
  renderTable();
  if (!status.niivue || typeof niivue === "undefined") {
    window.vesalius.error = "NiiVue is not installed";
    const note = document.createElement("p");
    const command = document.createElement("code");
    command.textContent = status.install;
    note.append("NiiVue is not installed: run ", command, ", then reload.");
    $("view").replaceChildren(note);
    return;
  }
  const nv = new niivue.Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [1, 0.85, 0, 1],
    isRadiologicalConvention: true, // as the overlays of the reports: the patient's left on the right
    loadingText: "",
  });
  await nv.attachToCanvas($("gl"));
  nv.onLocationChange = showLocation;
  state.nv = nv;
  window.vesalius.nv = nv;
  $("layout").addEventListener("change", () => applyLayout(state.nv.volumes[0].dims[3] <= 1));
  $("window-preset").addEventListener("change", (event) => {
    const image = state.nv.volumes[0];
    const preset = WINDOWS[event.target.value];
    if (preset) applyWindow(preset[0] - preset[1] / 2, preset[0] + preset[1] / 2);
    else applyWindow(image.robust_min ?? image.global_min, image.robust_max ?? image.global_max);
  });
  for (const id of ["cal-min", "cal-max"]) {
    $(id).addEventListener("change", () => applyWindow(Number($("cal-min").value), Number($("cal-max").value)));
  }
  const asked = new URLSearchParams(location.hash.slice(1)).get("case");
  const first = state.cases.findIndex((c) => c.volumes.includes("image")); // a broken case is not shown first
  const wanted = asked === null ? first : Number(asked);
  if (state.cases.length) await loadCase(wanted >= 0 && wanted < state.cases.length ? wanted : Math.max(first, 0));
}

main().catch((error) => {
  window.vesalius.error = String(error);
  message(String(error));
});
