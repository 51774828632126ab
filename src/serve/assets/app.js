// prh dashboard: live reload when the registry changes, hover values, clickable heatmap
// cells, and the paged SQL console. No dependencies.
"use strict";

(function () {
  const tip = document.getElementById("tip");

  // Hover: show a mark's title next to the pointer.
  document.addEventListener("mouseover", (ev) => {
    const mark = ev.target.closest && ev.target.closest(".cell, .point");
    if (!mark || !tip) return;
    const title = mark.querySelector("title");
    tip.textContent = title ? title.textContent : "";
    tip.hidden = false;
  });
  document.addEventListener("mousemove", (ev) => {
    if (tip && !tip.hidden) {
      tip.style.left = ev.pageX + 12 + "px";
      tip.style.top = ev.pageY + 12 + "px";
    }
  });
  document.addEventListener("mouseout", (ev) => {
    if (tip && ev.target.closest && ev.target.closest(".cell, .point")) tip.hidden = true;
  });

  // Click a heatmap cell that links somewhere.
  document.addEventListener("click", (ev) => {
    const cell = ev.target.closest && ev.target.closest("rect.cell[data-href]");
    if (cell) window.location.href = cell.getAttribute("data-href");
  });

  // Follow the registry: poll its version and reload (or re-run the query) on change.
  let version = null;
  const live = document.getElementById("live");
  async function poll() {
    try {
      const r = await fetch("/api/version", { cache: "no-store" });
      if (r.ok) {
        const v = (await r.json()).version;
        if (version !== null && v !== version) {
          if (document.getElementById("sql-form")) runQuery(offset);
          else window.location.reload();
        }
        version = v;
        if (live) live.className = "on";
      } else if (live) live.className = "off";
    } catch (e) {
      if (live) live.className = "off";
    }
  }
  poll();
  window.setInterval(poll, 2000);

  // SQL console.
  const form = document.getElementById("sql-form");
  const text = document.getElementById("sql-text");
  const out = document.getElementById("sql-result");
  const err = document.getElementById("sql-error");
  const csv = document.getElementById("sql-csv");
  const limit = 100;
  let offset = 0;

  function cell(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number" && !Number.isInteger(v)) return v.toPrecision(6);
    return String(v);
  }

  async function runQuery(at) {
    if (!form) return;
    offset = at;
    const q = text.value;
    csv.href = "/api/sql.csv?q=" + encodeURIComponent(q);
    const r = await fetch("/api/sql?q=" + encodeURIComponent(q) + "&offset=" + at + "&limit=" + limit);
    const body = await r.json();
    if (!r.ok) {
      err.textContent = body.error;
      err.hidden = false;
      out.textContent = "";
      return;
    }
    err.hidden = true;
    const table = document.createElement("table");
    table.id = "sql-table";
    const head = table.createTHead().insertRow();
    for (const c of body.columns) {
      const th = document.createElement("th");
      th.textContent = c;
      head.appendChild(th);
    }
    const tbody = table.createTBody();
    for (const row of body.rows) {
      const tr = tbody.insertRow();
      for (const v of row) {
        const td = tr.insertCell();
        td.textContent = cell(v);
        if (typeof v === "number") td.setAttribute("data-value", String(v));
      }
    }
    const pager = document.createElement("div");
    pager.className = "pager";
    const last = Math.min(body.offset + body.rows.length, body.total);
    const info = document.createElement("span");
    info.id = "sql-info";
    info.setAttribute("data-total", String(body.total));
    info.textContent = "rows " + (body.total ? body.offset + 1 : 0) + "–" + last + " of " + body.total;
    const prev = document.createElement("button");
    prev.textContent = "‹ previous";
    prev.id = "sql-prev";
    prev.disabled = body.offset === 0;
    prev.onclick = () => runQuery(Math.max(0, body.offset - limit));
    const next = document.createElement("button");
    next.textContent = "next ›";
    next.id = "sql-next";
    next.disabled = last >= body.total;
    next.onclick = () => runQuery(body.offset + limit);
    pager.append(prev, " ", info, " ", next);
    out.replaceChildren(pager, table);
  }

  if (form) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      runQuery(0);
    });
    runQuery(0);
  }
})();
