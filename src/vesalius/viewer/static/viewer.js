// Vesalius viewer: the case list (sortable, with metrics and verdicts) and a NiiVue view of the chosen case's image
// with its label maps: the prediction as a translucent fill, the reference as an outline, one colour per label
// (the palette of `vesalius overlay` and the reports, from /api/status) and a legend naming them.
// Label maps are drawn by NiiVue's label (atlas) shader: NIfTI intent "label" is set on them before upload, since
// its ordinary shader interpolates the colour table and tints every background voxel. The reference's outline is
// computed here (its voxels with a 6-neighbour of another value), so that it can be told from the prediction.
// Review: a verdict and a note per case (saved by the server), keyboard navigation (see KEYS), and corrections
// drawn with NiiVue's pen, sent as NIfTI and written by the server on the image's grid.
// window.vesalius exposes the state for tests: ready (the chosen case is drawn), caseIndex, error (of the last load).
// A case the server marks "broken" (a file missing or unreadable) is flagged in the list; the others still work.
"use strict";

const WINDOWS = { lung: [-600, 1500], abdomen: [40, 400], brain: [40, 80], bone: [400, 1800] }; // level, width (HU)
const OPACITY = { prediction: 0.5, reference: 1 };
const HIDDEN = 0.001; // NiiVue 0.69 skips the top layer at opacity 0 and keeps its old texture: hide, don't skip
const NIFTI_INTENT_LABEL = 1002;
const KEYS = "n/p: next/previous case; up/down: slice; 1/2: prediction/reference; c: crosshair; w: next window";
const state = {
  cases: [], columns: [], sortKey: null, sortDir: 1, current: -1, nv: null, palette: [], kinds: [], verdicts: [],
  labels: {}, reference: null,
};
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
  if (key === "verdict") return (c.review.verdict || "") + (c.review.corrected ? " (corrected)" : "") || undefined;
  return c.metrics[key] ?? undefined;
}

function formatValue(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "number" ? value.toFixed(3) : String(value);
}

function renderTable() {
  const keys = ["id", "group", "verdict", ...state.columns];
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

function labelName(value) {
  if (value === 0) return "background";
  return state.labels[String(value)] ?? `label ${value}`;
}

function labelColour(value) {
  return state.palette[(value - 1) % state.palette.length];
}

// The reference's outline: the label's colour mixed this far towards white, so that it stands out where it runs
// along (or over) the prediction's fill of the same label.
const OUTLINE_TINT = 0.55;

function labelColormap(top, tint = 0) {
  const cmap = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (let v = 0; v <= Math.max(top, 1); v++) {
    const [r, g, b] = v === 0 ? [0, 0, 0] : labelColour(v).map((c) => Math.round(c + (255 - c) * tint));
    cmap.R.push(r);
    cmap.G.push(g);
    cmap.B.push(b);
    cmap.A.push(v === 0 ? 0 : 255);
    cmap.I.push(v);
    cmap.labels.push(labelName(v));
  }
  return cmap;
}

// The voxels of a label map that touch another value within their axial slice (4-neighbourhood in the plane across
// the file axis that runs inferior-superior, `across`); the others become background. In-plane, because a thin
// structure touches the background through the slices above and below nearly everywhere: a 3D border would fill it.
function outline(img, dims, across) {
  const [nx, ny, nz] = [dims[1], dims[2], Math.max(dims[3], 1)];
  const out = new img.constructor(img.length);
  const steps = [1, nx, nx * ny];
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        const i = x + nx * (y + ny * z);
        const v = img[i];
        if (v === 0) continue;
        const at = [x, y, z];
        const size = [nx, ny, nz];
        let edge = false;
        for (let a = 0; a < 3 && !edge; a++) {
          if (size[a] === 1 || a === across) continue; // a 2D image, or the slices above and below
          edge = at[a] === 0 || at[a] === size[a] - 1 || img[i - steps[a]] !== v || img[i + steps[a]] !== v;
        }
        if (edge) out[i] = v;
      }
    }
  }
  return out;
}

function legend(values) {
  const box = $("legend");
  box.replaceChildren();
  for (const value of values) {
    const item = document.createElement("span");
    item.className = "legend-item";
    item.dataset.value = String(value);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = labelColour(value);
    swatch.style.background = `rgb(${r},${g},${b})`;
    swatch.dataset.rgb = `${r},${g},${b}`;
    item.append(swatch, `${value}: ${labelName(value)}`);
    box.appendChild(item);
  }
  const styles = document.createElement("span");
  styles.className = "legend-styles";
  styles.textContent = "prediction: fill, reference: light outline";
  box.appendChild(styles);
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
  // 3D: the image cut open at the crosshair (a clip plane facing the viewer), the label maps drawn through it
  nv.setClipPlane(is2D ? [2, 0, 0] : [0, 180, 20]);
}

function applyWindow(low, high) {
  const image = state.nv.volumes[0];
  image.cal_min = low;
  image.cal_max = high;
  state.nv.updateGLVolume();
  $("cal-min").value = +low.toPrecision(6);
  $("cal-max").value = +high.toPrecision(6);
}

function setLayer(kind, shown, opacity) {
  const index = state.kinds.indexOf(kind);
  if (index > 0) state.nv.setOpacity(index, shown && opacity > 0 ? opacity : HIDDEN);
}

function overlayControls() {
  const box = $("overlays");
  box.replaceChildren();
  for (const kind of state.kinds) {
    if (kind === "image") continue;
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
    const update = () => setLayer(kind, toggle.checked, Number(slider.value));
    toggle.addEventListener("change", update);
    slider.addEventListener("input", update);
    label.append(toggle, ` ${kind} `, slider);
    box.appendChild(label);
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
    let value = entry.value;
    if (kind === "reference" && state.reference && data.vox) {
      const dims = state.nv.volumes[index].hdr.dims; // the outline is drawn: read the reference itself
      const [x, y, z] = data.vox;
      value = state.reference[x + dims[1] * (y + dims[2] * z)];
    }
    if (kind === "image") parts.push(`value ${formatValue(value)}`);
    else if (kind) parts.push(`${kind}: ${labelName(Math.round(value))}`);
  });
  $("location").textContent = parts.join(" | ");
}

function reviewPanel(c) {
  const box = $("review");
  box.hidden = !state.reviewing;
  $("verdict").value = c.review.verdict || "";
  $("note").value = c.review.note || "";
  $("review-state").textContent = c.review.corrected ? "corrected" : "";
}

async function send(url, method, body, type) {
  const response = await fetch(url, { method, body, headers: { "Content-Type": type } });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `${response.status}`);
  return answer;
}

async function saveReview() {
  const c = state.cases[state.current];
  if (!c) return;
  const verdict = $("verdict").value || null;
  try {
    c.review = await send(
      `/api/cases/${c.index}/review`, "PUT", JSON.stringify({ verdict, note: $("note").value }), "application/json",
    );
    message(`review of ${c.id} saved`);
    renderTable();
  } catch (error) {
    message(`review not saved: ${error.message}`);
  }
}

function drawControls(values) {
  const pen = $("pen");
  pen.replaceChildren();
  for (const value of values.length ? values : [1]) {
    const option = document.createElement("option");
    option.value = String(value);
    option.textContent = `${value}: ${labelName(value)}`;
    pen.appendChild(option);
  }
  const erase = document.createElement("option");
  erase.value = "0";
  erase.textContent = "erase";
  pen.appendChild(erase);
  $("draw").checked = false;
  $("draw-tools").hidden = !state.reviewing;
}

function applyPen() {
  const nv = state.nv;
  nv.opts.penSize = Number($("pen-size").value);
  nv.setPenValue(Number($("pen").value), false);
  nv.setDrawingEnabled($("draw").checked);
  if ($("draw").checked && !nv.drawBitmap) nv.createEmptyDrawing();
}

async function saveCorrection() {
  const c = state.cases[state.current];
  const nv = state.nv;
  if (!c || !nv.drawBitmap) {
    message("nothing drawn");
    return;
  }
  const nifti = await nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
  try {
    const answer = await send(`/api/cases/${c.index}/correction`, "POST", nifti, "application/octet-stream");
    c.review = { ...c.review, corrected: true };
    message(`correction of ${c.id} saved as ${answer.saved}`);
    window.vesalius.saved = answer;
    renderTable();
    reviewPanel(c);
  } catch (error) {
    message(`correction not saved: ${error.message}`);
  }
}

function toggle(id) {
  const box = $(id);
  if (!box) return;
  box.checked = !box.checked;
  box.dispatchEvent(new Event("change"));
}

function step(delta) {
  const order = sortedCases().filter((c) => c.volumes.includes("image"));
  const at = order.findIndex((c) => c.index === state.current);
  const next = order[Math.min(Math.max(at + delta, 0), order.length - 1)];
  if (next && next.index !== state.current) loadCase(next.index);
}

function onKey(event) {
  if (event.target.closest && event.target.closest("input[type=text], input[type=number], textarea, select")) return;
  const nv = state.nv;
  const actions = {
    n: () => step(1),
    p: () => step(-1),
    ArrowUp: () => nv.moveCrosshairInVox(0, 0, 1),
    ArrowDown: () => nv.moveCrosshairInVox(0, 0, -1),
    1: () => toggle("show-prediction"),
    2: () => toggle("show-reference"),
    c: () => toggle("crosshair"),
    w: () => {
      const select = $("window-preset");
      select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
      select.dispatchEvent(new Event("change"));
    },
  };
  const action = actions[event.key];
  if (action && nv) {
    event.preventDefault();
    event.stopPropagation();
    action();
  }
}

// NiiVue draws the crosshair as geometry in millimetres: one millimetre covers many screen pixels on a zoomed
// small image and hides anatomy. The width is set from the drawn slices' scale so that it is about 1.5 pixels.
const CROSSHAIR_PIXELS = 1.5;

function crosshairMillimetres() {
  const slice = (state.nv.screenSlices || []).find((s) => s.fovMM && s.leftTopWidthHeight[2] > 0);
  return slice ? (CROSSHAIR_PIXELS * Math.abs(slice.fovMM[0])) / slice.leftTopWidthHeight[2] : 1;
}

function applyCrosshair() {
  state.nv.setCrosshairWidth($("crosshair").checked ? crosshairMillimetres() : 0);
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
    state.labels = c.labels;
    state.reference = null;
    const found = new Set(Object.keys(c.labels).map(Number));
    for (let v = 1; v < state.nv.volumes.length; v++) {
      for (const value of state.nv.volumes[v].img) if (value > 0) found.add(value);
    }
    const values = [...found].sort((a, b) => a - b);
    const top = values.length ? values[values.length - 1] : 1;
    const cmap = labelColormap(top);
    for (let v = 1; v < state.nv.volumes.length; v++) {
      const volume = state.nv.volumes[v];
      volume.hdr.intent_code = NIFTI_INTENT_LABEL;
      if (state.kinds[v] === "reference") {
        state.reference = volume.img;
        const across = (volume.permRAS || [1, 2, 3]).findIndex((axis) => Math.abs(axis) === 3);
        volume.img = outline(volume.img, volume.hdr.dims, across);
      }
      volume.setColormapLabel(state.kinds[v] === "reference" ? labelColormap(top, OUTLINE_TINT) : cmap);
    }
    state.nv.setDrawColormap(cmap); // the pen paints in the labels' own colours
    state.nv.setDrawingEnabled(false);
    state.nv.closeDrawing();
    state.nv.updateGLVolume();
    const image = state.nv.volumes[0];
    const is2D = image.dims[3] <= 1;
    overlayControls();
    legend(values);
    reviewPanel(c);
    drawControls(values);
    $("window-preset").value = "auto";
    applyWindow(image.cal_min, image.cal_max);
    applyLayout(is2D);
    $("gl").style.visibility = "";
    state.nv.drawScene();
    applyCrosshair(); // the slices' scale is known once they are drawn
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
  state.reviewing = status.review;
  for (const verdict of ["", ...status.verdicts]) {
    const option = document.createElement("option");
    option.value = verdict;
    option.textContent = verdict || "no verdict";
    $("verdict").appendChild(option);
  }
  $("keys").textContent = KEYS;
  state.cases = (await getJson("/api/cases")).cases;
  state.columns = metricColumns(state.cases);
  window.vesalius.listed = true;
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
    crosshairColor: [1, 0.85, 0, 0.8],
    crosshairWidth: 1,
    crosshairWidthUnit: "mm", // set to about 1.5 screen pixels by applyCrosshair (one voxel, the default, hides anatomy)
    show3Dcrosshair: false,
    renderOverlayBlend: 1.0,
    drawingEnabled: false,
    isRadiologicalConvention: true, // as the overlays of the reports: the patient's left on the right
    loadingText: "",
  });
  await nv.attachToCanvas($("gl"));
  nv.onLocationChange = showLocation;
  state.nv = nv;
  window.vesalius.nv = nv;
  $("layout").addEventListener("change", () => {
    applyLayout(state.nv.volumes[0].dims[3] <= 1);
    applyCrosshair();
  });
  window.addEventListener("resize", () => requestAnimationFrame(applyCrosshair));
  $("window-preset").addEventListener("change", (event) => {
    const image = state.nv.volumes[0];
    const preset = WINDOWS[event.target.value];
    if (preset) applyWindow(preset[0] - preset[1] / 2, preset[0] + preset[1] / 2);
    else applyWindow(image.robust_min ?? image.global_min, image.robust_max ?? image.global_max);
  });
  $("crosshair").addEventListener("change", applyCrosshair);
  $("save-review").addEventListener("click", saveReview);
  $("verdict").addEventListener("change", saveReview);
  for (const id of ["draw", "pen", "pen-size"]) $(id).addEventListener("change", applyPen);
  $("undo").addEventListener("click", () => state.nv.drawUndo());
  $("save-correction").addEventListener("click", saveCorrection);
  document.addEventListener("keydown", onKey, true);
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
