// face-sets review: the page over the library. Plain JS, no dependencies; every change is a
// POST with the token in a header, answered with the new state.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("facesets-token", params.get("token"));
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  const TOKEN = sessionStorage.getItem("facesets-token") || "";
  const $ = (id) => document.getElementById(id);
  const ui = { page: 0, per: 50, q: "", filter: "all", current: null, facePage: 0, facePer: 100, selected: new Set(), state: null, detail: null };

  async function api(path) {
    const r = await fetch(path, { headers: { "X-Facesets-Token": TOKEN }, credentials: "same-origin" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Facesets-Token": TOKEN, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    return out;
  }
  function say(text, isError) {
    const m = $("message");
    m.textContent = text;
    m.className = isError ? "error" : "";
    m.hidden = !text;
  }
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k) e.append(k);
    return e;
  }
  const thumb = (key, size) => el("img", { src: "/face/" + key + ".png", loading: "lazy", alt: "face", width: size, height: size });
  const plural = (n, w) => n + " " + w + (n === 1 ? "" : "s");

  function describe(d) {
    const n = (x) => (typeof x === "number" ? "#" + x : x);
    const f = d.faces ? plural(d.faces.length, "face") : "";
    switch (d.action) {
      case "name": return "name " + n(d.identity) + " \u2192 " + d.name;
      case "merge": return "merge " + n(d.from) + " into " + n(d.identity);
      case "split": return "split " + f + " off " + n(d.identity) + (d.name ? " as " + d.name : " into a new identity");
      case "reject": return "reject " + f + " from " + n(d.identity);
      case "accept": return "accept " + f + " into " + n(d.identity);
      case "hide": return "hide " + n(d.identity);
      case "no_export": return "never export " + f;
      default: return JSON.stringify(d);
    }
  }
  function plain(d) {
    const out = {};
    for (const k of ["action", "identity", "from", "faces", "name"]) if (d[k] !== undefined) out[k] = d[k];
    return out;
  }

  function renderState(s) {
    ui.state = s;
    $("libpath").textContent = s.library;
    if (s.error) say("The decisions file cannot be used, nothing will be written until it is fixed: " + s.error, true);
    const newIdx = new Set(s.pending.new.map((d) => d.index));
    const item = (d, label) => el("li", { class: newIdx.has(d.index) ? "new" : "applied", "data-index": d.index },
      describe(d) + label, el("button", { class: "undo", "data-index": d.index, onclick: () => undo(d), text: "Undo" }));
    $("pending-list").replaceChildren(
      ...s.decisions.filter((d) => newIdx.has(d.index)).map((d) => item(d, "")),
      ...s.pending.undone.map((d) => el("li", { class: "undone" }, describe(d) + " (removed from the file)")));
    $("decision-list").replaceChildren(...s.decisions.map((d) => item(d, newIdx.has(d.index) ? " (pending)" : " (applied)")));
    $("decisions-summary").textContent = "All " + plural(s.decisions.length, "decision") + " in " + s.decisions_file;
    const n = s.pending.new.length + s.pending.undone.length + (s.pending.reordered ? 1 : 0);
    $("pending-count").textContent = n ? plural(n, "change") + " pending" : "All decisions applied";
    $("pending-until").hidden = n === 0;
    $("pending").hidden = s.decisions.length === 0 && s.pending.undone.length === 0;
    $("conflicts").hidden = s.conflicts.length === 0;
    $("conflict-list").replaceChildren(...s.conflicts.map((c) => el("li", { text: c.message || JSON.stringify(c) })));
    $("retired-list").replaceChildren(...s.retired.map((r) => el("li", { text: "#" + r.number + " " + (r.name || "") + " \u2192 #" + r.merged_into })));
    $("retired-box").hidden = s.retired.length === 0;
  }

  async function loadList() {
    const q = new URLSearchParams({ q: ui.q, filter: ui.filter, page: ui.page, per: ui.per });
    const r = await api("/api/identities?" + q);
    $("list-info").textContent = plural(r.total, "identity").replace("identitys", "identities");
    const ul = $("identity-list");
    ul.replaceChildren(...r.items.map((i) => {
      const li = el("li", { "data-number": i.number, class: i.number === ui.current ? "active" : "", onclick: () => select(i.number) },
        el("span", { class: "nm", text: i.name }),
        el("span", { class: "meta", text: "#" + i.number + " \u00b7 " + i.kind + " \u00b7 " + plural(i.faces, "face") + (i.hidden ? " \u00b7 hidden" : "") + (i.candidates ? " \u00b7 " + i.candidates + " cand." : "") }),
        el("span", { class: "thumbs" }, ...i.preview.map((k) => thumb(k, 40))));
      return li;
    }));
    const pages = Math.max(1, Math.ceil(r.total / r.per));
    $("list-page").textContent = (r.page + 1) + " / " + pages;
    $("list-prev").disabled = r.page === 0;
    $("list-next").disabled = r.page + 1 >= pages;
  }

  async function select(n) {
    if (n !== ui.current) { ui.facePage = 0; ui.selected.clear(); }
    ui.current = n;
    document.querySelectorAll("#identity-list li").forEach((li) => li.classList.toggle("active", Number(li.dataset.number) === n));
    await loadDetail();
  }

  function faceTile(f, selectable) {
    const t = el("div", { class: "tile" + (ui.selected.has(f.face_key) ? " selected" : ""), "data-face": f.face_key, title: f.path || "" },
      thumb(f.face_key, 112),
      el("div", { class: "cap" }, el("span", { text: Number(f.score).toFixed(2) }),
        el("a", { href: "/photo/" + f.face_key, target: "_blank", rel: "noopener", text: "photo", onclick: (e) => e.stopPropagation() })));
    if (selectable) t.addEventListener("click", () => {
      if (ui.selected.has(f.face_key)) ui.selected.delete(f.face_key); else ui.selected.add(f.face_key);
      t.classList.toggle("selected");
      updateSelection();
    });
    return t;
  }
  function updateSelection() {
    const n = ui.selected.size;
    $("selected-count").textContent = n + " selected";
    for (const id of ["split-btn", "reject-btn", "noexport-btn"]) $(id).disabled = n === 0;
  }

  async function loadDetail() {
    if (ui.current === null) return;
    let d;
    try {
      d = await api("/api/identity/" + ui.current + "?page=" + ui.facePage + "&per=" + ui.facePer);
    } catch (e) {
      $("detail-body").hidden = true; $("detail-empty").hidden = false; $("detail-empty").textContent = e.message; return;
    }
    ui.detail = d;
    $("detail-empty").hidden = true; $("detail-body").hidden = false;
    $("d-name").textContent = d.name;
    $("d-number").textContent = "#" + d.number;
    $("d-kind").textContent = d.kind + (d.label ? " (folder " + d.label + ")" : "") + (d.parent ? " of " + d.parent : "") + (d.thin ? ", thin" : "");
    $("d-hidden").hidden = !d.hidden;
    $("d-sources").textContent = d.sources.join(", ") || "\u2014";
    $("d-faces").textContent = plural(d.faces_total, "face") + " from " + plural(d.photos, "photo") + (d.rejected.length ? " \u00b7 " + d.rejected.length + " rejected" : "");
    $("d-eras").textContent = d.eras.length ? d.eras.map((e) => e.name + " (" + plural(e.faces, "face") + (e.thin ? ", thin" : "") + ")").join(", ") : "\u2014";
    $("d-conflicts").replaceChildren(...d.conflicts.map((c) => el("li", { text: c.message })));
    $("rename-input").value = d.name;
    $("hide-btn").textContent = d.hidden ? "Unhide" : "Hide";
    $("faces").replaceChildren(...d.face_list.map((f) => faceTile(f, true)));
    const pages = Math.max(1, Math.ceil(d.faces_total / d.per));
    $("faces-page").textContent = (d.page + 1) + " / " + pages;
    $("faces-prev").disabled = d.page === 0;
    $("faces-next").disabled = d.page + 1 >= pages;
    $("candidates").replaceChildren(...d.candidate_list.map((c) => {
      const t = faceTile({ ...c, path: c.source_path || "" }, false);
      t.append(el("div", { class: "btns" },
        el("button", { class: "accept", "data-face": c.face_key, text: "Accept", onclick: () => decide({ action: "accept", identity: d.number, faces: [c.face_key] }, "accepted 1 face") }),
        el("button", { class: "reject", "data-face": c.face_key, text: "Reject", onclick: () => decide({ action: "reject", identity: d.number, faces: [c.face_key] }, "rejected 1 candidate") })));
      return t;
    }));
    $("no-candidates").hidden = d.candidate_list.length > 0;
    updateSelection();
  }

  async function refresh() {
    renderState(await api("/api/state"));
    await loadList();
    await loadDetail();
  }

  async function decide(decision, done) {
    try {
      const s = await post("/api/decisions", { decision });
      ui.selected.clear();
      for (const id of ["merge-from", "split-name"]) $(id).value = "";
      say(done + " \u2014 written to " + s.decisions_file + "; pending until the next snakemake --profile wsl all", false);
      renderState(s);
      if (decision.action === "merge" && ui.state) ui.current = decision.identity;
      if (decision.action === "split") ui.facePage = 0;
      await loadList();
      await loadDetail();
    } catch (e) {
      say(e.message, true);
    }
  }
  async function undo(d) {
    try {
      const s = await post("/api/undo", { index: d.index, decision: plain(d) });
      say("undone: " + describe(d) + " \u2014 pending until the next snakemake --profile wsl all", false);
      renderState(s);
      await loadList();
      await loadDetail();
    } catch (e) {
      say(e.message, true);
    }
  }

  $("rename-btn").addEventListener("click", () => {
    const name = $("rename-input").value.trim();
    if (name) decide({ action: "name", identity: ui.current, name }, "renamed #" + ui.current + " to " + name);
  });
  $("merge-btn").addEventListener("click", () => {
    const other = Number($("merge-from").value);
    if (other) decide({ action: "merge", identity: ui.current, from: other }, "merged #" + other + " into #" + ui.current);
  });
  $("hide-btn").addEventListener("click", () => {
    if (ui.detail && ui.detail.hidden) {
      const h = ui.state.decisions.filter((d) => d.action === "hide" && (d.identity === ui.current || d.identity === ui.detail.name));
      if (h.length) undo(h[h.length - 1]);
    } else decide({ action: "hide", identity: ui.current }, "hid #" + ui.current);
  });
  $("split-btn").addEventListener("click", () => {
    const d = { action: "split", identity: ui.current, faces: [...ui.selected] };
    const name = $("split-name").value.trim();
    if (name) d.name = name;
    decide(d, "split " + plural(d.faces.length, "face") + " off #" + ui.current);
    $("split-name").value = "";
  });
  $("reject-btn").addEventListener("click", () => decide({ action: "reject", identity: ui.current, faces: [...ui.selected] }, "rejected " + plural(ui.selected.size, "face")));
  $("noexport-btn").addEventListener("click", () => decide({ action: "no_export", faces: [...ui.selected] }, plural(ui.selected.size, "face") + " never exported"));
  $("list-prev").addEventListener("click", () => { ui.page--; loadList(); });
  $("list-next").addEventListener("click", () => { ui.page++; loadList(); });
  $("faces-prev").addEventListener("click", () => { ui.facePage--; loadDetail(); });
  $("faces-next").addEventListener("click", () => { ui.facePage++; loadDetail(); });
  let timer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { ui.q = $("search").value; ui.page = 0; loadList(); }, 200);
  });
  $("filter").addEventListener("change", () => { ui.filter = $("filter").value; ui.page = 0; loadList(); });

  refresh().catch((e) => say(e.message, true));
})();
