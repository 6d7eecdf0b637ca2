// The job page's viewer: the current CT and the registered prior side by side (NiiVue, three planes each), with
// linked crosshairs/scrolling, window presets, a blend/flicker control and overlays of |d| (mm) and of the
// Jacobian determinant (det <= 0, folding, in red). Data: /jobs/<id>/viewer.json and the NIfTI volumes it lists
// (same-origin, the console session cookie). NiiVue is bundled in ./niivue.js (scripts/build_viewer.sh).
import { Niivue, SHOW_RENDER } from "./niivue.js";

const root = document.getElementById("viewer");
const $ = (sel) => root.querySelector(sel);
const status = (text, error = false) => {
  const el = $("#viewer-status");
  el.textContent = text;
  el.classList.toggle("error", error);
};

// Jacobian colours over [lo, hi]. NiiVue draws an overlay voxel fully (times the layer's opacity) wherever the
// colour's alpha is above zero, so the ordinary range is a fully transparent band: det <= 0 (folding) red,
// 0 < det < 0.5 (strong compression) blue, 0.5 .. 2 transparent, det > 2 (strong expansion) yellow.
export const JACOBIAN_BANDS = { compression: 0.5, expansion: 2.0 };
function jacobianColormap(lo, hi) {
  const idx = (v) => Math.max(0, Math.min(255, Math.round((255 * (v - lo)) / (hi - lo))));
  const i0 = Math.max(1, idx(0));
  const iLo = Math.max(i0 + 2, idx(JACOBIAN_BANDS.compression));
  const iHi = Math.min(253, Math.max(iLo + 2, idx(JACOBIAN_BANDS.expansion)));
  const points = [
    [0, 255, 0, 0, 255], [i0, 255, 0, 0, 255],
    [i0 + 1, 30, 70, 255, 255], [iLo - 1, 130, 170, 255, 255],
    [iLo, 0, 0, 0, 0], [iHi, 0, 0, 0, 0],
    [iHi + 1, 255, 235, 80, 255], [255, 255, 200, 0, 255],
  ];
  return {
    I: points.map((p) => p[0]), R: points.map((p) => p[1]), G: points.map((p) => p[2]),
    B: points.map((p) => p[3]), A: points.map((p) => p[4]),
  };
}

async function main() {
  const jobId = root.dataset.job;
  const resp = await fetch(`/jobs/${jobId}/viewer.json`, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try { msg = (await resp.json()).detail || msg; } catch (e) { /* not JSON */ }
    status(`No viewer for this job: ${msg}`, true);
    root.classList.add("unavailable");
    return;
  }
  const meta = await resp.json();
  const v = meta.volumes;
  const opts = {
    backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false, crosshairColor: [1, 0.75, 0, 0.8],
    crosshairWidth: 1, multiplanarShowRender: SHOW_RENDER.NEVER, isRadiologicalConvention: true,
    textHeight: 0.04, loadingText: "loading …", dragAndDropEnabled: false,
  };
  const nvCur = new Niivue(opts);
  const nvPrior = new Niivue(opts);
  await nvCur.attachToCanvas($("#nv-current"));
  await nvPrior.attachToCanvas($("#nv-prior"));
  const s = meta.stats || {};
  const jlo = Math.min(-0.5, (s.jacobian_min ?? 0) - 0.01);
  const jhi = Math.max(3.0, Math.min(5.0, s.jacobian_max ?? 3.0));
  for (const nv of [nvCur, nvPrior]) {
    nv.addColormap("totalreg_jacobian", jacobianColormap(jlo, jhi));
    nv.setSliceType(nv.sliceTypeMultiplanar);
  }
  const soft = meta.presets["soft tissue"];
  const win = { cal_min: soft.center - soft.width / 2, cal_max: soft.center + soft.width / 2 };
  const overlays = [];
  if (v.displacement) {
    overlays.push({ url: v.displacement, name: "displacement.nii.gz", colormap: "warm", opacity: 0,
                    cal_min: 0.0, cal_max: Math.max(1.0, s.displacement_max_mm || 1.0) });
  }
  if (v.jacobian) {
    overlays.push({ url: v.jacobian, name: "jacobian.nii.gz", colormap: "totalreg_jacobian", opacity: 0,
                    cal_min: jlo, cal_max: jhi });
  }
  const gray = (url, name, opacity = 1) => ({ url, name, colormap: "gray", opacity, ...win });
  const curList = v.current ? [gray(v.current, "current.nii.gz"), ...overlays] : [];
  // the prior panel: registered prior, the current scan on top (blend/flicker), then the overlays; what the
  // current panel already loaded is cloned, not downloaded twice
  const priorList = v.prior ? [gray(v.prior, "prior.nii.gz"), ...(v.current ? [] : overlays)] : [];
  status("loading volumes …");
  await Promise.all([curList.length ? nvCur.loadVolumes(curList) : null,
                     priorList.length ? nvPrior.loadVolumes(priorList) : null]);
  if (v.prior && v.current) {
    for (const src of nvCur.volumes) {
      const copy = src.clone();
      nvPrior.addVolume(copy);
      // the clone keeps the voxels; its display settings are set again here
      Object.assign(copy, { colormap: src.colormap, cal_min: src.cal_min, cal_max: src.cal_max, opacity: 0 });
    }
    nvPrior.updateGLVolume();
  }
  const curOverlayBase = 1;
  const priorOverlayBase = v.current ? 2 : 1;
  const blendIndex = v.current ? 1 : -1;
  nvCur.broadcastTo(nvPrior, { "2d": true, "3d": true });
  nvPrior.broadcastTo(nvCur, { "2d": true, "3d": true });

  const state = { overlay: "none", blend: 0, flicker: null, preset: "soft tissue" };
  const api = { current: nvCur, prior: nvPrior, meta, state, ready: false };
  window.totalregViewer = api;

  function applyWindow(name) {
    const p = meta.presets[name];
    state.preset = name;
    const lo = p.center - p.width / 2;
    const hi = p.center + p.width / 2;
    for (const [nv, idxs] of [[nvCur, [0]], [nvPrior, blendIndex >= 0 ? [0, blendIndex] : [0]]]) {
      for (const i of idxs) {
        if (nv.volumes[i]) { nv.volumes[i].cal_min = lo; nv.volumes[i].cal_max = hi; }
      }
      if (nv.volumes.length) nv.updateGLVolume();
    }
    root.querySelectorAll("[data-preset]").forEach((b) => b.classList.toggle("active", b.dataset.preset === name));
  }

  function applyOverlay(which) {
    state.overlay = which;
    const names = overlays.map((o) => o.name.replace(".nii.gz", ""));
    const strength = Number($("#viewer-overlay-opacity").value) / 100;
    for (const [nv, base] of [[nvCur, curOverlayBase], [nvPrior, priorOverlayBase]]) {
      names.forEach((n, k) => { if (nv.volumes[base + k]) nv.setOpacity(base + k, n === which ? strength : 0); });
    }
    const legend = $("#viewer-legend");
    if (which === "displacement") {
      legend.textContent = `|d| 0 – ${(s.displacement_max_mm ?? 0).toFixed(1)} mm (mean ${(s.displacement_mean_mm ?? 0).toFixed(1)} mm)`;
    } else if (which === "jacobian") {
      legend.innerHTML = `<span class="sw red"></span> det ≤ 0, folding (${(s.folding_percent ?? 0).toFixed(3)} % of the DSR grid) ` +
        `<span class="sw blue"></span> det &lt; ${JACOBIAN_BANDS.compression} <span class="sw yellow"></span> det &gt; ${JACOBIAN_BANDS.expansion}; ` +
        `min ${(s.jacobian_min ?? 0).toFixed(2)}, max ${(s.jacobian_max ?? 0).toFixed(2)}`;
    } else {
      legend.textContent = "";
    }
  }

  function applyBlend(fraction) {
    state.blend = fraction;
    if (blendIndex >= 0 && nvPrior.volumes[blendIndex]) nvPrior.setOpacity(blendIndex, fraction);
  }

  function setFlicker(on) {
    if (state.flicker) { clearInterval(state.flicker); state.flicker = null; }
    $("#viewer-flicker").classList.toggle("active", on);
    $("#viewer-flicker").setAttribute("aria-pressed", on ? "true" : "false");
    if (on) {
      let shown = false;
      state.flicker = setInterval(() => { shown = !shown; if (blendIndex >= 0) nvPrior.setOpacity(blendIndex, shown ? 1 : 0); }, 600);
    } else {
      applyBlend(Number($("#viewer-blend").value) / 100);
    }
  }

  root.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => applyWindow(b.dataset.preset)));
  root.querySelectorAll("input[name=viewer-overlay]").forEach((r) => r.addEventListener("change", () => applyOverlay(r.value)));
  $("#viewer-overlay-opacity").addEventListener("input", () => applyOverlay(state.overlay));
  $("#viewer-blend").addEventListener("input", (e) => { setFlicker(false); applyBlend(Number(e.target.value) / 100); });
  $("#viewer-flicker").addEventListener("click", () => setFlicker(!state.flicker));
  if (!v.displacement) root.querySelector("input[value=displacement]").disabled = true;
  if (!v.jacobian) root.querySelector("input[value=jacobian]").disabled = true;
  const where = $("#viewer-where");
  const onLoc = (data) => { where.textContent = data.string || ""; };
  nvCur.onLocationChange = onLoc;
  nvPrior.onLocationChange = onLoc;

  applyWindow("soft tissue");
  applyOverlay("none");
  const notes = (meta.notes || []).join("; ");
  status(notes ? `Note: ${notes}` : "");
  api.applyWindow = applyWindow;
  api.applyOverlay = applyOverlay;
  api.applyBlend = applyBlend;
  api.ready = true;
  root.dataset.ready = "1";
}

main().catch((err) => {
  status(`The viewer could not start: ${err && err.message ? err.message : err}`, true);
  console.error(err);
});
