// The report's only script: draws the Plotly figures and runs the sample browser.
// Every string from the data reaches the page through textContent, never through innerHTML.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  // ---- charts -------------------------------------------------------------------------------------
  const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
  const plots = Array.from(document.querySelectorAll("div.chart[data-fig]")).map((div) => {
    const fig = DATA.figures[div.dataset.fig];
    return Plotly.newPlot(div, fig.data, fig.layout, config);
  });

  // ---- sample browser -----------------------------------------------------------------------------
  const B = DATA.browser;
  const S = B.strings;
  const str = (i) => (i < 0 ? null : S[i]);
  const PAGE = 100;
  let shown = PAGE, selected = null;

  function option(value, label) { return el("option", { value: String(value), text: label }); }

  function fillSelect(sel, items, first) {
    sel.replaceChildren(...(first ? [option("any", first)] : []), ...items.map(([v, l]) => option(v, l)));
  }

  function suite() { return B.suites[Number($("f-suite").value)]; }

  // The list shows what differs between prompts: an instruction every prompt starts with is cut.
  function commonPrefix(texts) {
    let p = texts.length ? texts[0] : "";
    for (const t of texts) { let k = 0; while (k < p.length && k < t.length && p[k] === t[k]) k++; p = p.slice(0, k); }
    return p.length;
  }

  function setupSuite() {
    const s = suite();
    s.cut = commonPrefix(s.prompt.map((k) => str(k) || ""));
    fillSelect($("f-variant"), s.runs.map((r, k) => [k, B.variants[r.run]]), "any variant");
    fillSelect($("f-criterion"), s.criteria.map((c, k) => [k, c]), "any");
    fillSelect($("f-slice"), s.labels.map((l, k) => [k, l]), "all samples");
    selected = null;
    update();
  }

  function passes(s, k, i) { return s.runs[k].pass[i]; }

  function matches(s, i, f) {
    const ks = f.variant === "any" ? s.runs.map((_, k) => k) : [Number(f.variant)];
    if (f.result === "pass" && !ks.some((k) => passes(s, k, i) === 1)) return false;
    if (f.result === "fail" && !ks.some((k) => passes(s, k, i) === 0)) return false;
    if (f.result === "split") {
      const v = s.runs.map((_, k) => passes(s, k, i)).filter((x) => x >= 0);
      if (!(v.includes(0) && v.includes(1))) return false;
    }
    if (f.criterion !== "any") {
      const c = Number(f.criterion);
      if (!ks.some((k) => { const x = s.runs[k].crit[i][2 * c]; return x >= 0 && x < 100; })) return false;
    }
    if (f.slice !== "any" && !s.tags[i].includes(Number(f.slice))) return false;
    if (f.text) {
      const hay = [s.ids[i], str(s.prompt[i]), str(s.ref[i]), ...s.runs.map((r) => str(r.out[i]))]
        .filter((x) => x !== null).join("\n").toLowerCase();
      if (!hay.includes(f.text)) return false;
    }
    return true;
  }

  function filters() {
    return { variant: $("f-variant").value, result: $("f-result").value, criterion: $("f-criterion").value,
             slice: $("f-slice").value, text: $("f-text").value.trim().toLowerCase() };
  }

  function update() {
    const s = suite(), f = filters();
    const hits = [];
    for (let i = 0; i < s.ids.length; i++) if (matches(s, i, f)) hits.push(i);
    $("b-count").textContent = `${hits.length} of ${s.ids.length} samples match` +
      (hits.length > shown ? `; the first ${shown} are listed` : "");
    const rows = hits.slice(0, shown).map((i) => {
      const dots = el("td", { class: "dots" }, ...s.runs.map((r) => el("span", {
        class: "dot " + (r.pass[i] === 1 ? "p" : r.pass[i] === 0 ? "f" : ""),
        title: `${B.variants[r.run]}: ${r.pass[i] === 1 ? "pass" : r.pass[i] === 0 ? "fail" : "no output"}` })));
      const prompt = (str(s.prompt[i]) || "").slice(s.cut).replace(/\s+/g, " ").trim();
      const tr = el("tr", { "data-i": String(i) }, el("td", { class: "id", text: s.ids[i] }),
                    el("td", { text: prompt.length > 90 ? prompt.slice(0, 90) + "…" : prompt }), dots);
      if (i === selected) tr.classList.add("sel");
      tr.addEventListener("click", () => { selected = i; update(); });
      return tr;
    });
    $("b-list").replaceChildren(el("tr", {}, el("th", { text: "id" }), el("th", { text: "prompt" }),
                                   el("th", { text: "pass / fail per variant" })), ...rows);
    $("b-more").hidden = hits.length <= shown;
    if (selected === null || !hits.includes(selected)) selected = hits.length ? hits[0] : null;
    showDetail(s, selected);
    const first = $("b-list").querySelector(`tr[data-i="${selected}"]`);
    if (first) first.classList.add("sel");
  }

  // Word differences: a longest common subsequence of the two word lists; words of `text` outside it
  // are marked. Outputs are short; past MAX words a pair is shown unmarked rather than compared slowly.
  const MAX = 400;
  function marked(text, against) {
    const node = el("pre");
    if (text === null) { node.textContent = "(no output)"; return node; }
    if (against === null || against === undefined || against === text) { node.textContent = text; return node; }
    const a = text.split(/(\s+)/), b = against.split(/(\s+)/);
    const wa = a.filter((_, k) => k % 2 === 0), wb = b.filter((_, k) => k % 2 === 0);
    if (wa.length > MAX || wb.length > MAX) { node.textContent = text; return node; }
    const n = wa.length, m = wb.length, L = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
    for (let x = n - 1; x >= 0; x--)
      for (let y = m - 1; y >= 0; y--)
        L[x][y] = wa[x] === wb[y] ? L[x + 1][y + 1] + 1 : Math.max(L[x + 1][y], L[x][y + 1]);
    const same = new Array(n).fill(false);
    for (let x = 0, y = 0; x < n && y < m;) {
      if (wa[x] === wb[y]) { same[x] = true; x++; y++; } else if (L[x + 1][y] >= L[x][y + 1]) x++; else y++;
    }
    a.forEach((part, k) => {
      if (k % 2 === 1 || part === "") node.append(part);
      else if (same[k / 2]) node.append(part);
      else node.append(el("mark", { text: part, title: "differs" }));
    });
    return node;
  }

  function showDetail(s, i) {
    const box = $("b-detail");
    if (i === null) { box.replaceChildren(el("p", { class: "meta", text: "No sample matches these filters." })); return; }
    const mode = $("f-diff").value;
    const baseK = s.runs.findIndex((r) => r.run === B.baseline);
    const against = mode === "reference" ? str(s.ref[i]) : mode === "baseline" && baseK >= 0 ? str(s.runs[baseK].out[i]) : null;
    const tags = s.tags[i].map((t) => s.labels[t]).join(", ");
    const cards = s.runs.map((r, k) => {
      const ok = r.pass[i], out = str(r.out[i]);
      const crit = s.criteria.map((c, ci) => {
        const sc = r.crit[i][2 * ci], why = str(r.crit[i][2 * ci + 1]);
        if (sc < 0) return null;
        return el("li", { class: sc < 100 ? "miss" : "", text: `${c}: ${(sc / 100).toFixed(2)}${why ? " — " + why : ""}` });
      }).filter(Boolean);
      const score = r.score[i] < 0 ? "–" : (r.score[i] / 1000).toFixed(2);
      const isBase = k === baseK && mode === "baseline";
      return el("div", { class: "card " + (ok === 1 ? "p" : ok === 0 ? "f" : "") },
        el("h4", {}, el("span", { text: B.variants[r.run] + (isBase ? " (compared with)" : "") }),
           el("span", { class: ok === 1 ? "pass" : ok === 0 ? "fail" : "meta",
                        text: `${score} ${ok === 1 ? "pass" : ok === 0 ? "fail" : ""}` })),
        marked(out, isBase ? null : against), crit.length ? el("ul", {}, ...crit) : null);
    });
    box.replaceChildren(
      el("h3", { text: `${s.name} / ${s.ids[i]}` }),
      tags ? el("p", { class: "meta", text: tags }) : null,
      el("p", { class: "meta", text: "prompt" }), el("pre", { text: str(s.prompt[i]) || "" }),
      el("p", { class: "meta", text: "reference" }), el("pre", { text: str(s.ref[i]) ?? "–" }),
      el("div", { class: "cards" }, ...cards));
  }

  if (B.suites.length) {
    fillSelect($("f-suite"), B.suites.map((s, k) => [k, s.name]), null);
    $("f-suite").addEventListener("change", () => { shown = PAGE; setupSuite(); });
    for (const id of ["f-variant", "f-result", "f-criterion", "f-slice", "f-diff"])
      $(id).addEventListener("change", () => { shown = PAGE; update(); });
    $("f-text").addEventListener("input", () => { shown = PAGE; update(); });
    $("b-more").addEventListener("click", () => { shown += PAGE; update(); });
    setupSuite();
  } else {
    $("browser").replaceChildren(el("p", { class: "meta", text: "No generated outputs to browse." }));
  }

  // Tests and the benchmark wait for this: every chart drawn, the browser filled.
  Promise.all(plots).then(() => { document.body.dataset.ready = "true"; },
                          (err) => { document.body.dataset.ready = "error"; console.error(err); });
})();
