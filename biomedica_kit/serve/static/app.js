// The search page: text and image queries, filters, a result grid, details, more like this.
// Everything shown comes from the JSON API of the same server; values are put in the page
// as text (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const FILTERS = ["license", "label", "kind", "journal"];
const state = { page: 1, image: null, similar: null, total: null };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function params() {
  const p = new URLSearchParams();
  const q = $("q").value.trim();
  if (q) p.set("q", q);
  p.set("mode", $("mode").value);
  p.set("k", $("k").value);
  for (const f of FILTERS) if ($(f).value) p.set(f, $(f).value);
  if ($("year").value.trim()) p.set("year", $("year").value.trim());
  return p;
}

function articleLink(r) {
  if (r.pmcid) return `https://pmc.ncbi.nlm.nih.gov/articles/${encodeURIComponent(r.pmcid)}/`;
  return r.article_url;
}

function licence(r) {
  const code = r.license_code && r.license_code !== "none" ? r.license_code : null;
  return code || r.license || "licence?";
}

function card(r) {
  const badges = el("div", { class: "badges" },
    el("span", { class: `badge ${r.license || ""}`, title: `licence: ${r.license || "?"}` },
       licence(r)),
    r.kind ? el("span", { class: "badge" }, r.kind) : null,
    r.label ? el("span", { class: "badge", title: "taxonomy label" }, r.label) : null);
  const meta = el("div", { class: "meta" },
    [r.journal, r.year].filter(Boolean).join(" · "), " · ",
    el("a", { href: articleLink(r), target: "_blank", rel: "noopener",
              onclick: (e) => e.stopPropagation() }, r.pmcid || "article"));
  return el("div", { class: "card", "data-key": r.key, onclick: () => openDetail(r) },
    el("div", { class: "thumb" },
       el("img", { src: r.thumbnail_url, loading: "lazy", alt: r.figure_label || r.key })),
    el("div", { class: "body" }, badges,
       el("div", { class: "cap", title: r.caption || "" }, r.caption || "(no caption)"),
       meta));
}

function render(res, what) {
  const grid = $("grid");
  grid.replaceChildren(...res.results.map(card));
  state.total = res.total;
  const shown = res.results.length;
  const of = res.total !== null && res.total !== undefined ? ` of ${res.total}` : "";
  status(shown ? `${what}: results ${res.offset + 1}–${res.offset + shown}${of} ` +
                 `(${res.mode}, ${res.took_ms.toFixed(1)} ms)`
               : `${what}: no results`);
  $("pager").hidden = !(state.page > 1 || shown === res.k);
  $("prev").disabled = state.page <= 1;
  $("next").disabled = shown < res.k;
  $("pageno").textContent = `page ${state.page}`;
}

async function run() {
  const p = params();
  const k = Number($("k").value);
  const offset = (state.page - 1) * k;
  try {
    if (state.similar) {
      status("Searching…");
      const res = await getJSON(`/samples/${encodeURIComponent(state.similar)}/similar?` +
                                `k=${k}&offset=${offset}`);
      render(res, `More like ${state.similar}`);
      return;
    }
    if (state.image) {
      const form = new FormData();
      form.append("image", state.image);
      if (p.get("q")) form.append("q", p.get("q"));
      form.append("k", String(k));
      form.append("offset", String(offset));
      for (const f of [...FILTERS, "year"]) if (p.get(f)) form.append(f, p.get(f));
      status("Searching by image…");
      render(await getJSON("/search/image", { method: "POST", body: form }),
             p.get("q") ? "Image + text" : "Image");
      return;
    }
    if (!p.get("q")) { status("Type a query or drop an image."); return; }
    p.set("page", String(state.page));
    history.replaceState(null, "", `/?${p}`);
    status("Searching…");
    render(await getJSON(`/search?${p}`), `“${p.get("q")}”`);
  } catch (err) {
    $("grid").replaceChildren();
    $("pager").hidden = true;
    status(err.message, true);
  }
}

async function openDetail(r) {
  const dlg = $("detail");
  $("d-image").src = r.image_url;
  $("d-image").alt = r.figure_label || r.key;
  $("d-title").textContent = r.title || r.key;
  $("d-meta").textContent = [r.figure_label, r.journal, r.year, licence(r), r.key]
    .filter(Boolean).join(" · ");
  $("d-caption").textContent = r.caption || "";
  $("d-refs").replaceChildren(el("li", {}, "loading…"));
  $("d-article").href = articleLink(r);
  $("d-json").href = r.url;
  $("more").onclick = () => { dlg.close(); similar(r.key); };
  if (!dlg.open) dlg.showModal();
  try {
    const rec = await getJSON(r.url);
    const refs = rec.inline_refs || [];
    $("d-refs").replaceChildren(...(refs.length ? refs.map((x) => typeof x === "string"
      ? el("li", {}, x)
      : el("li", {}, x.section ? el("b", {}, `${x.section}: `) : null, x.paragraph || ""))
      : [el("li", {}, "none")]));
  } catch (err) {
    $("d-refs").replaceChildren(el("li", {}, err.message));
  }
}

function similar(key) {
  state.similar = key;
  state.page = 1;
  run();
}

function setImage(file) {
  state.image = file;
  state.similar = null;
  const drop = $("drop");
  drop.classList.toggle("has", !!file);
  $("clear-image").hidden = !file;
  if (file) {
    const img = el("img", { src: URL.createObjectURL(file), alt: "query image" });
    $("drop-text").replaceChildren(img, `image: ${file.name}`);
  } else {
    $("drop-text").replaceChildren("Drop an image here or choose a file to find similar " +
                                   "figures");
  }
}

async function init() {
  try {
    const [facets, health] = await Promise.all([getJSON("/facets"), getJSON("/health")]);
    for (const f of FILTERS) {
      for (const { value, count } of facets[f] || []) {
        $(f).append(el("option", { value }, `${value} (${count})`));
      }
      $(f).disabled = !(facets[f] || []).length;
    }
    for (const opt of $("mode").options) opt.disabled = !health.modes.includes(opt.value);
    if (!health.modes.includes($("mode").value)) $("mode").value = health.modes[0];
    $("drop").hidden = !health.image_search;
    if (health.stale) status("The index is older than the dataset: run `biomedica index`.",
                             true);
  } catch (err) {
    status(err.message, true);
  }
  const p = new URLSearchParams(location.search);
  for (const name of ["q", "mode", "k", "year", ...FILTERS]) {
    if (p.get(name)) $(name).value = p.get(name);
  }
  state.page = Number(p.get("page")) || 1;
  if (p.get("q")) run();
}

$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  state.page = 1;
  state.similar = null;
  run();
});
for (const id of [...FILTERS, "k"]) {
  $(id).addEventListener("change", () => { state.page = 1; if ($("q").value || state.image) run(); });
}
$("prev").addEventListener("click", () => { state.page -= 1; run(); });
$("next").addEventListener("click", () => { state.page += 1; run(); });
$("close").addEventListener("click", () => $("detail").close());
$("file").addEventListener("change", (e) => {
  if (e.target.files[0]) { setImage(e.target.files[0]); state.page = 1; run(); }
});
$("clear-image").addEventListener("click", () => { setImage(null); $("file").value = ""; });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) { setImage(f); state.page = 1; run(); }
});
init();
