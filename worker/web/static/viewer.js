/* The 3D tumour viewer: Plotly meshes in patient coordinates plus linked axial/coronal/sagittal slices.
 *
 * Data comes from /api/jobs/<id>/viewer/... as packed binary blobs (see viewer_data.py):
 * "NSV1", uint32 header length, JSON header, then 4-byte aligned little-endian arrays.
 * Volumes are uint8 on a canonical grid (i -> patient Right, j -> Anterior, k -> Superior),
 * stored as data[k][j][i]. Mesh vertices are in patient LPS millimetres.
 */
"use strict";

(() => {
  const { el, getJSON } = NS;
  const jobId = document.body.dataset.jobId;
  const base = "/api/jobs/" + encodeURIComponent(jobId) + "/viewer/";
  const statusNode = document.getElementById("viewer-status");
  const plotNode = document.getElementById("plot3d");

  const LABEL_COLOURS = { 1: [224, 68, 62], 2: [58, 163, 91], 4: [242, 194, 48] };
  const COLOUR_MAPS = {
    probability: [[0, 0, 0], [120, 0, 0], [230, 40, 0], [255, 200, 0], [255, 255, 220]],
    uncertainty: [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    gradcam: [[0, 0, 131], [0, 60, 170], [5, 255, 255], [255, 255, 0], [250, 0, 0], [128, 0, 0]],
  };
  const FIELD_INFO = {
    entropy: { title: "Entropy", map: "uncertainty" },
    variance: { title: "MC variance", map: "uncertainty" },
    gradcam: { title: "Grad-CAM", map: "gradcam" },
  };
  const DTYPES = { uint8: Uint8Array, uint32: Uint32Array, float32: Float32Array, int32: Int32Array };

  const state = {
    manifest: null,
    dims: [1, 1, 1],
    volumes: {},
    cursor: [0, 0, 0],
    sequence: null,
    overlay: "seg",
    overlayOpacity: 0.55,
    meshes: {},
    visible: { head: true, ncr: true, ed: true, et: true, prior: true },
    // the prior's surface is see-through so the current regions stay visible inside it
    opacity: { head: 0.12, ncr: 0.9, ed: 0.35, et: 0.75, prior: 0.3 },
    colourMode: "region",
  };

  // --- data --------------------------------------------------------------------------------

  function unpack(buffer) {
    const bytes = new Uint8Array(buffer);
    const magic = String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]);
    if (magic !== "NSV1") throw new Error("unexpected data format " + magic);
    const length = new DataView(buffer).getUint32(4, true);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
    const start = 8 + length;
    const arrays = {};
    for (const entry of header.arrays) {
      const Type = DTYPES[entry.dtype];
      if (!Type) throw new Error("unsupported dtype " + entry.dtype);
      const count = entry.shape.reduce((a, b) => a * b, 1);
      arrays[entry.name] = new Type(buffer, start + entry.offset, count);
    }
    return { header, arrays };
  }

  async function fetchBlob(path) {
    const response = await fetch(base + path, { credentials: "same-origin" });
    if (!response.ok) throw new Error("cannot load " + path + ": " + response.status);
    return unpack(await response.arrayBuffer());
  }

  async function volume(key) {
    if (!state.volumes[key]) state.volumes[key] = fetchBlob("volumes/" + encodeURIComponent(key));
    return state.volumes[key];
  }

  // --- colour helpers ---------------------------------------------------------------------------

  function lut(stops) {
    const table = new Uint8Array(256 * 3);
    for (let v = 0; v < 256; v++) {
      const t = (v / 255) * (stops.length - 1);
      const i = Math.min(stops.length - 2, Math.floor(t));
      const f = t - i;
      for (let c = 0; c < 3; c++) table[v * 3 + c] = Math.round(stops[i][c] * (1 - f) + stops[i + 1][c] * f);
    }
    return table;
  }
  const LUTS = Object.fromEntries(Object.entries(COLOUR_MAPS).map(([k, v]) => [k, lut(v)]));

  function plotlyScale(stops) {
    return stops.map((rgb, i) => [i / (stops.length - 1), "rgb(" + rgb.join(",") + ")"]);
  }

  // --- geometry ------------------------------------------------------------------------------

  function voxelToPatient(ijk) {
    const a = state.manifest.affine_lps;
    return [0, 1, 2].map((r) => a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3]);
  }

  function patientToVoxel(xyz) {
    const a = state.manifest.inverse_affine_lps;
    return [0, 1, 2].map((r) => {
      const value = a[r][0] * xyz[0] + a[r][1] * xyz[1] + a[r][2] * xyz[2] + a[r][3];
      return Math.max(0, Math.min(state.dims[r] - 1, Math.round(value)));
    });
  }

  // view -> how a screen pixel (sx, sy) maps to a voxel; radiological convention (patient right on the left)
  const VIEWS = {
    axial: { axis: 2, width: (d) => d[0], height: (d) => d[1], letters: ["R", "L", "A", "P"],
      voxel: (sx, sy, s, d) => [d[0] - 1 - sx, d[1] - 1 - sy, s],
      screen: (ijk, d) => [d[0] - 1 - ijk[0], d[1] - 1 - ijk[1]], spacing: (sp) => [sp[0], sp[1]] },
    coronal: { axis: 1, width: (d) => d[0], height: (d) => d[2], letters: ["R", "L", "S", "I"],
      voxel: (sx, sy, s, d) => [d[0] - 1 - sx, s, d[2] - 1 - sy],
      screen: (ijk, d) => [d[0] - 1 - ijk[0], d[2] - 1 - ijk[2]], spacing: (sp) => [sp[0], sp[2]] },
    sagittal: { axis: 0, width: (d) => d[1], height: (d) => d[2], letters: ["A", "P", "S", "I"],
      voxel: (sx, sy, s, d) => [s, d[1] - 1 - sx, d[2] - 1 - sy],
      screen: (ijk, d) => [d[1] - 1 - ijk[1], d[2] - 1 - ijk[2]], spacing: (sp) => [sp[1], sp[2]] },
  };

  // --- 2D slices -------------------------------------------------------------------------------

  const offscreen = document.createElement("canvas");

  function overlayInfo() {
    return (state.manifest.overlays.find((item) => item.key === state.overlay) || null);
  }

  async function drawSlices() {
    const image = state.sequence ? await volume(state.sequence) : null;
    const info = overlayInfo();
    const overlay = info ? await volume(info.key) : null;
    for (const name of Object.keys(VIEWS)) drawView(name, image, overlay, info);
    updateReadout(image, overlay, info);
  }

  function drawView(name, image, overlay, info) {
    const view = VIEWS[name];
    const d = state.dims;
    const w = view.width(d);
    const h = view.height(d);
    const slice = state.cursor[view.axis];
    offscreen.width = w;
    offscreen.height = h;
    const octx = offscreen.getContext("2d");
    const pixels = octx.createImageData(w, h);
    const out = pixels.data;
    const nx = d[0];
    const nxy = d[0] * d[1];
    const img = image ? image.arrays.data : null;
    const ovl = overlay ? overlay.arrays.data : null;
    const alpha = state.overlayOpacity;
    const table = info && info.kind !== "labels" ? LUTS[info.kind] || LUTS.probability : null;
    for (let sy = 0; sy < h; sy++) {
      for (let sx = 0; sx < w; sx++) {
        const v = view.voxel(sx, sy, slice, d);
        const index = v[2] * nxy + v[1] * nx + v[0];
        const grey = img ? img[index] : 0;
        let r = grey;
        let g = grey;
        let b = grey;
        if (ovl) {
          const value = ovl[index];
          if (value) {
            let colour = null;
            let a = alpha;
            if (table) {
              colour = [table[value * 3], table[value * 3 + 1], table[value * 3 + 2]];
              a = alpha * Math.min(1, value / 48);
            } else {
              colour = LABEL_COLOURS[value] || [255, 0, 255];
            }
            r = r * (1 - a) + colour[0] * a;
            g = g * (1 - a) + colour[1] * a;
            b = b * (1 - a) + colour[2] * a;
          }
        }
        const o = (sy * w + sx) * 4;
        out[o] = r;
        out[o + 1] = g;
        out[o + 2] = b;
        out[o + 3] = 255;
      }
    }
    octx.putImageData(pixels, 0, 0);

    const canvas = document.getElementById("canvas-" + name);
    const wrap = canvas.parentElement;
    const ratio = window.devicePixelRatio || 1;
    const boxW = wrap.clientWidth;
    const boxH = wrap.clientHeight;
    canvas.width = Math.round(boxW * ratio);
    canvas.height = Math.round(boxH * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, boxW, boxH);
    const sp = view.spacing(state.manifest.spacing_mm);
    const physW = w * sp[0];
    const physH = h * sp[1];
    const scale = Math.min(boxW / physW, boxH / physH);
    const drawW = physW * scale;
    const drawH = physH * scale;
    const left = (boxW - drawW) / 2;
    const top = (boxH - drawH) / 2;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(offscreen, left, top, drawW, drawH);
    canvas._geometry = { left, top, drawW, drawH, w, h };

    const [cx, cy] = view.screen(state.cursor, d);
    const px = left + ((cx + 0.5) / w) * drawW;
    const py = top + ((cy + 0.5) / h) * drawH;
    ctx.strokeStyle = "rgba(0, 220, 255, 0.7)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left, py); ctx.lineTo(left + drawW, py);
    ctx.moveTo(px, top); ctx.lineTo(px, top + drawH);
    ctx.stroke();
    ctx.fillStyle = "rgba(255,255,255,0.85)";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.fillText(view.letters[0], left + 4, top + drawH / 2);
    ctx.textAlign = "right";
    ctx.fillText(view.letters[1], left + drawW - 4, top + drawH / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    ctx.fillText(view.letters[2], left + drawW / 2, top + 3);
    ctx.textBaseline = "bottom";
    ctx.fillText(view.letters[3], left + drawW / 2, top + drawH - 3);

    const slider = document.getElementById("slider-" + name);
    slider.max = String(state.dims[view.axis] - 1);
    slider.value = String(slice);
    const mm = voxelToPatient(state.cursor);
    const label = ["x", "y", "z"][view.axis];
    document.getElementById("label-" + name).textContent =
      "slice " + (slice + 1) + " / " + state.dims[view.axis] + " · " + label + " " + mm[view.axis].toFixed(1) + " mm";
  }

  function valueAt(blob, ijk) {
    const d = state.dims;
    return blob.arrays.data[ijk[2] * d[0] * d[1] + ijk[1] * d[0] + ijk[0]];
  }

  function updateReadout(image, overlay, info) {
    const mm = voxelToPatient(state.cursor);
    const parts = ["LPS (" + mm.map((v) => v.toFixed(1)).join(", ") + ") mm"];
    if (overlay && info) {
      const raw = valueAt(overlay, state.cursor);
      if (info.kind === "labels") {
        const names = { 0: "background", 1: "NCR", 2: "ED", 4: "ET" };
        parts.push("label " + (names[raw] || raw));
      } else {
        const range = overlay.header.value_range;
        parts.push(info.label + " " + (range[0] + (raw / 255) * (range[1] - range[0])).toPrecision(3));
      }
    }
    document.getElementById("cursor-readout").textContent = parts.join(" · ");
    const legend = document.getElementById("overlay-legend");
    if (!info) legend.textContent = "";
    else if (info.kind === "labels") legend.textContent = "Overlay colours: NCR red · ED green · ET yellow";
    else if (overlay) {
      const range = overlay.header.value_range;
      legend.textContent = info.label + ": dark = " + range[0].toPrecision(2) + ", bright = " + range[1].toPrecision(3);
    }
  }

  function setCursor(ijk) {
    state.cursor = ijk.map((v, axis) => Math.max(0, Math.min(state.dims[axis] - 1, Math.round(v))));
    drawSlices().catch(report);
    if (state.plotReady) updateMarker();
  }

  function bindSliceControls() {
    for (const [name, view] of Object.entries(VIEWS)) {
      const slider = document.getElementById("slider-" + name);
      slider.addEventListener("input", () => {
        const next = state.cursor.slice();
        next[view.axis] = Number(slider.value);
        setCursor(next);
      });
      const canvas = document.getElementById("canvas-" + name);
      canvas.addEventListener("click", (event) => {
        const g = canvas._geometry;
        if (!g) return;
        const rect = canvas.getBoundingClientRect();
        const sx = Math.floor(((event.clientX - rect.left - g.left) / g.drawW) * g.w);
        const sy = Math.floor(((event.clientY - rect.top - g.top) / g.drawH) * g.h);
        if (sx < 0 || sy < 0 || sx >= g.w || sy >= g.h) return;
        setCursor(view.voxel(sx, sy, state.cursor[view.axis], state.dims));
      });
    }
    document.getElementById("sequence-select").addEventListener("change", (event) => {
      state.sequence = event.target.value || null;
      drawSlices().catch(report);
    });
    document.getElementById("overlay-select").addEventListener("change", (event) => {
      state.overlay = event.target.value;
      drawSlices().catch(report);
    });
    document.getElementById("overlay-opacity").addEventListener("input", (event) => {
      state.overlayOpacity = Number(event.target.value) / 100;
      drawSlices().catch(report);
    });
    window.addEventListener("resize", () => drawSlices().catch(report));
  }

  // --- 3D --------------------------------------------------------------------------------------

  function meshTrace(name, label, colour, showScale, fieldRanges) {
    const mesh = state.meshes[name];
    const v = mesh.arrays.vertices;
    const f = mesh.arrays.faces;
    const n = v.length / 3;
    const x = new Float32Array(n);
    const y = new Float32Array(n);
    const z = new Float32Array(n);
    for (let p = 0; p < n; p++) { x[p] = v[3 * p]; y[p] = v[3 * p + 1]; z[p] = v[3 * p + 2]; }
    const m = f.length / 3;
    const i = new Uint32Array(m);
    const j = new Uint32Array(m);
    const k = new Uint32Array(m);
    for (let q = 0; q < m; q++) { i[q] = f[3 * q]; j[q] = f[3 * q + 1]; k[q] = f[3 * q + 2]; }
    const trace = {
      type: "mesh3d", name: label, x, y, z, i, j, k,
      opacity: state.opacity[name], visible: state.visible[name],
      flatshading: false, showlegend: false,
      lighting: { ambient: 0.45, diffuse: 0.8, specular: 0.25, roughness: 0.6, fresnel: 0.2 },
      lightposition: { x: 1000, y: -2000, z: 3000 },
      hovertemplate: label + "<br>x %{x:.1f}, y %{y:.1f}, z %{z:.1f} mm (LPS)<extra></extra>",
    };
    if (name === "head") {  // context only: hovers and clicks go to the tumour surfaces
      trace.hoverinfo = "skip";
      delete trace.hovertemplate;
    }
    const field = state.colourMode;
    if (name !== "head" && field !== "region" && mesh.arrays[field]) {
      const info = FIELD_INFO[field];
      trace.intensity = mesh.arrays[field];
      trace.colorscale = plotlyScale(COLOUR_MAPS[info.map]);
      trace.cmin = fieldRanges[0];
      trace.cmax = fieldRanges[1];
      trace.showscale = showScale;
      trace.colorbar = { title: { text: info.title, font: { color: "#dfe6ee" } }, tickfont: { color: "#dfe6ee" },
        len: 0.6, thickness: 14, x: 1.0 };
      trace.hovertemplate = label + "<br>" + info.title + " %{intensity:.3f}<extra></extra>";
    } else {
      trace.color = colour;
    }
    return trace;
  }

  function fieldRange(field) {
    if (field === "gradcam") return [0, 1];
    let high = 0;
    for (const region of state.manifest.regions) {
      const mesh = state.meshes[region.key];
      const range = mesh && mesh.header.fields[field];
      if (range) high = Math.max(high, range[1]);
    }
    return [0, high > 0 ? high : 1];
  }

  function markerTrace() {
    const p = voxelToPatient(state.cursor);
    return {
      type: "scatter3d", mode: "markers", x: [p[0]], y: [p[1]], z: [p[2]], showlegend: false,
      marker: { size: 5, color: "#00dcff", line: { color: "#003b46", width: 1 } }, hoverinfo: "skip", name: "cursor",
    };
  }

  function traces() {
    const list = [];
    const range = fieldRange(state.colourMode);
    if (state.meshes.head && state.meshes.head.arrays.vertices.length) {
      list.push(meshTrace("head", state.manifest.head.label, state.manifest.head.color, false, range));
    }
    const prior = state.manifest.prior;
    if (prior && state.meshes.prior && state.meshes.prior.arrays.vertices.length) {
      list.push(meshTrace("prior", prior.label + (prior.study_date ? " (" + prior.study_date + ")" : ""),
        prior.color, false, range));
    }
    let scaleShown = false;
    for (const region of state.manifest.regions) {
      const mesh = state.meshes[region.key];
      if (!mesh || !mesh.arrays.vertices.length) continue;
      list.push(meshTrace(region.key, region.label, region.color, !scaleShown && state.visible[region.key], range));
      if (state.visible[region.key]) scaleShown = true;
    }
    list.push(markerTrace());
    return list;
  }

  const AXIS = { showbackground: false, gridcolor: "#2c3a48", zerolinecolor: "#2c3a48", color: "#9fb0c2",
    tickfont: { size: 10 } };

  function layout() {
    return {
      paper_bgcolor: "#0f1720", plot_bgcolor: "#0f1720", margin: { l: 0, r: 0, t: 0, b: 0 },
      uirevision: "keep",
      scene: {
        uirevision: "keep", aspectmode: "data", bgcolor: "#0f1720",
        xaxis: { ...AXIS, title: { text: "x mm (→ patient left)" } },
        yaxis: { ...AXIS, title: { text: "y mm (→ posterior)" } },
        zaxis: { ...AXIS, title: { text: "z mm (→ superior)" } },
        camera: { eye: { x: 0.35, y: -1.9, z: 0.55 }, up: { x: 0, y: 0, z: 1 } },
      },
      font: { family: "system-ui, sans-serif", color: "#dfe6ee" },
    };
  }

  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage"] };

  async function redraw3d() {
    await Plotly.react(plotNode, traces(), layout(), CONFIG);
  }

  function updateMarker() {
    const p = voxelToPatient(state.cursor);
    const index = plotNode.data.length - 1;
    Plotly.restyle(plotNode, { x: [[p[0]]], y: [[p[1]]], z: [[p[2]]] }, [index]);
  }

  // --- picking a surface point under the mouse ------------------------------------------------

  function mat4mul(a, b) {  // column-major 4x4, as WebGL keeps them
    const out = new Float64Array(16);
    for (let col = 0; col < 4; col++) {
      for (let row = 0; row < 4; row++) {
        let sum = 0;
        for (let k = 0; k < 4; k++) sum += a[k * 4 + row] * b[col * 4 + k];
        out[col * 4 + row] = sum;
      }
    }
    return out;
  }

  /* A function from patient (x, y, z) to [screen x, screen y, depth], from the scene's current camera. */
  function projector() {
    const scene = plotNode._fullLayout && plotNode._fullLayout.scene && plotNode._fullLayout.scene._scene;
    const camera = scene && scene.glplot && scene.glplot.cameraParams;
    if (!camera || !scene.dataScale) return null;
    const m = mat4mul(camera.projection, mat4mul(camera.view, camera.model));
    const ds = scene.dataScale;
    const rect = scene.glplot.canvas.getBoundingClientRect();
    return (x, y, z) => {
      const X = x * ds[0];
      const Y = y * ds[1];
      const Z = z * ds[2];
      const w = m[3] * X + m[7] * Y + m[11] * Z + m[15];
      return [
        rect.left + ((m[0] * X + m[4] * Y + m[8] * Z + m[12]) / w + 1) / 2 * rect.width,
        rect.top + (1 - (m[1] * X + m[5] * Y + m[9] * Z + m[13]) / w) / 2 * rect.height,
        (m[2] * X + m[6] * Y + m[10] * Z + m[14]) / w,
      ];
    };
  }

  /* The front-most vertex of a visible tumour surface under the mouse (the head surface only if
   * no tumour surface is there), or null. Works whatever Plotly's own picking does. */
  function surfacePointAt(clientX, clientY) {
    const project = projector();
    if (!project) return null;
    for (const group of [state.manifest.regions.map((region) => region.key), ["head"]]) {
      let best = null;
      let nearest = null;
      for (const key of group) {
        const mesh = state.meshes[key];
        if (!mesh || !state.visible[key]) continue;
        const v = mesh.arrays.vertices;
        for (let p = 0; p < v.length; p += 3) {
          const s = project(v[p], v[p + 1], v[p + 2]);
          const d2 = (s[0] - clientX) ** 2 + (s[1] - clientY) ** 2;
          if (d2 <= 64 && (!best || s[2] < best.depth)) best = { depth: s[2], point: [v[p], v[p + 1], v[p + 2]] };
          if (d2 <= 625 && (!nearest || d2 < nearest.d2)) nearest = { d2, point: [v[p], v[p + 1], v[p + 2]] };
        }
      }
      if (best || nearest) return (best || nearest).point;
    }
    return null;
  }

  function bind3dControls() {
    // A click that does not drag the camera moves the slices to the surface point under the mouse
    // (Plotly's own plotly_click only fires when a frame renders while the button is down).
    let hovered = null;
    let pressedAt = null;
    plotNode.on("plotly_hover", (event) => { hovered = event && event.points ? event.points[0] : null; });
    plotNode.on("plotly_unhover", () => { hovered = null; });
    plotNode.addEventListener("mousedown", (event) => { pressedAt = [event.clientX, event.clientY]; }, true);
    plotNode.addEventListener("click", (event) => {
      if (!pressedAt) return;
      const moved = Math.hypot(event.clientX - pressedAt[0], event.clientY - pressedAt[1]);
      pressedAt = null;
      if (moved >= 4) return;
      const point = surfacePointAt(event.clientX, event.clientY)
        || (hovered && hovered.data && hovered.data.type === "mesh3d" ? [hovered.x, hovered.y, hovered.z] : null);
      if (point) setCursor(patientToVoxel(point));
    });
    document.getElementById("colour-mode").addEventListener("change", (event) => {
      state.colourMode = event.target.value;
      redraw3d().catch(report);
    });
  }

  // --- legend --------------------------------------------------------------------------------

  function legendRow(key, label, colour, volumeText) {
    const toggle = el("input", { type: "checkbox", id: "toggle-" + key, "aria-label": "Show " + label });
    toggle.checked = state.visible[key];
    toggle.addEventListener("change", () => {
      state.visible[key] = toggle.checked;
      redraw3d().catch(report);
    });
    const opacity = el("input", { type: "range", min: "0", max: "100", id: "opacity-" + key,
      "aria-label": "Opacity of " + label, value: String(Math.round(state.opacity[key] * 100)) });
    opacity.addEventListener("input", () => {
      state.opacity[key] = Number(opacity.value) / 100;
      redraw3d().catch(report);
    });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colour;
    return el("tr", {},
      el("td", {}, toggle),
      el("td", {}, el("label", { for: "toggle-" + key }, swatch, " ", label)),
      el("td", { class: "num" }, volumeText),
      el("td", {}, opacity));
  }

  function renderLegend() {
    const m = state.manifest;
    const rows = m.regions.map((region) => legendRow(region.key, region.label, region.color, region.volume_ml.toFixed(1) + " mL"));
    if (m.prior) {
      const volume = typeof m.prior.volume_ml === "number" ? m.prior.volume_ml.toFixed(1) + " mL" : "";
      rows.push(legendRow("prior", m.prior.label + (m.prior.study_date ? " (" + m.prior.study_date + ")" : ""),
        m.prior.color, volume));
    }
    rows.push(legendRow("head", m.head.label, m.head.color, ""));
    NS.replaceRows(document.querySelector("#legend tbody"), rows);
    document.getElementById("totals").textContent =
      "Whole tumour " + m.totals_ml.wt.toFixed(1) + " mL · tumour core " + m.totals_ml.tc.toFixed(1) + " mL" +
      (m.sequences_used ? " · sequences used: " + m.sequences_used.join(", ") : "");
  }

  function renderModelCard() {
    const model = state.manifest.model || {};
    const box = document.getElementById("model-card");
    const parts = [el("div", { class: "model-name" }, (model.name || "model") + " " + (model.version || ""))];
    if (model.status) parts.push(el("div", { class: "muted" }, model.status));
    if (model.intended_use) parts.push(el("p", {}, model.intended_use));
    if (model.authors) parts.push(el("div", { class: "muted" }, "Authors: " + model.authors));
    if (model.license) parts.push(el("div", { class: "muted" }, "Licence: " + model.license));
    const more = [];
    if (model.training_data) more.push(el("p", {}, el("strong", {}, "Training data: "), model.training_data));
    if (model.architecture) more.push(el("p", {}, el("strong", {}, "Network: "), model.architecture));
    if (Array.isArray(model.limitations) && model.limitations.length) {
      more.push(el("strong", {}, "Limitations"), el("ul", {}, ...model.limitations.map((item) => el("li", {}, item))));
    }
    if (more.length) parts.push(el("details", {}, el("summary", {}, "Model card"), ...more));
    box.replaceChildren(...parts);
  }

  function fillSelects() {
    const m = state.manifest;
    const sequenceSelect = document.getElementById("sequence-select");
    sequenceSelect.replaceChildren(...m.sequences.map((item) => el("option", { value: item.key }, item.label)));
    if (!m.sequences.length) sequenceSelect.appendChild(el("option", { value: "" }, "(no images)"));
    const preferred = ["image_t1ce", "image_flair", "image_t1", "image_t2"].find((key) => m.sequences.some((s) => s.key === key));
    state.sequence = preferred || null;
    sequenceSelect.value = state.sequence || "";
    const overlaySelect = document.getElementById("overlay-select");
    overlaySelect.replaceChildren(el("option", { value: "" }, "none"),
      ...m.overlays.map((item) => el("option", { value: item.key }, item.label)));
    overlaySelect.value = state.overlay;
  }

  // --- start -----------------------------------------------------------------------------------

  function report(err) {
    statusNode.textContent = "problem: " + err.message;
    statusNode.classList.add("live-error");
  }

  async function start() {
    const started = performance.now();
    state.manifest = await getJSON(base + "manifest");
    state.dims = state.manifest.shape;
    state.cursor = state.manifest.start_voxel.slice();
    fillSelects();
    renderLegend();
    renderModelCard();
    bindSliceControls();
    statusNode.textContent = "loading images…";
    await drawSlices();
    statusNode.textContent = "building surfaces…";
    const names = state.manifest.prior ? [...state.manifest.meshes, "prior"] : state.manifest.meshes;
    const meshes = await Promise.all(names.map((name) => fetchBlob("meshes/" + name)));
    names.forEach((name, index) => { state.meshes[name] = meshes[index]; });
    await redraw3d();
    bind3dControls();
    state.plotReady = true;
    statusNode.textContent = "ready in " + ((performance.now() - started) / 1000).toFixed(1) + " s";
    document.body.dataset.viewerReady = "1";
  }

  start().catch(report);
})();
