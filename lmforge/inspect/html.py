"""Standalone HTML views: one file each, data inline as JSON, plain JavaScript, no network.

Every page is the same frame (title, notes, a `<div id="view">`) with the data in a
`<script type="application/json">` block and one small script that draws the view; the script
sets `document.body.dataset.ready = "1"` when it is done, so a headless browser can check it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lmforge.utils.fs import atomic_write_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.note { color: #555; max-width: 60em; }
.controls { margin: 8px 0; display: flex; gap: 12px; flex-wrap: wrap; align-items: center; }
.tok { font-family: ui-monospace, monospace; white-space: pre; }
table.grid { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 12px; }
table.grid td, table.grid th { border: 1px solid #ddd; padding: 2px 4px; text-align: center; }
table.grid th { background: #f5f5f7; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 3px; }
.models { display: grid; gap: 4px; justify-content: start; align-items: center; }
.models canvas { border: 1px solid #ccc; cursor: pointer; image-rendering: pixelated; }
.models canvas.on { outline: 2px solid #0071e3; }
.sal { line-height: 2.1; font-size: 16px; margin: 6px 0 14px; }
.sal span { padding: 2px 1px; border-radius: 3px; }
"""

# the page's data (inline JSON), the view element and an element builder, shared by every view
PRELUDE_JS = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const view = document.getElementById('view');
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
"""

ATTENTION_JS = (
    PRELUDE_JS
    + r"""
const COLORS = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2',
  '#7f7f7f','#bcbd22','#17becf','#393b79','#637939','#8c6d31','#843c39','#7b4173','#3182bd'];
const layers = Object.keys(D.patterns).map(Number).sort((a, b) => a - b);
let layer = layers[0];
let shown = new Set(D.heads.map((h, i) => i));
let focus = null;

const NS = 'http://www.w3.org/2000/svg';
function svgEl(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

view.appendChild(el('h2', {}, 'Head view'));
const controls = el('div', {class: 'controls'});
const select = el('select', {id: 'layer'});
for (const l of layers) select.appendChild(el('option', {value: l}, 'layer ' + l));
select.onchange = () => { layer = Number(select.value); drawHeads(); markModel(); };
controls.appendChild(select);
D.heads.forEach((h, i) => {
  const label = el('label', {});
  const box = el('input', {type: 'checkbox', 'data-head': h});
  box.checked = true;
  box.onchange = () => { if (box.checked) shown.add(i); else shown.delete(i); drawHeads(); };
  const sw = el('span', {class: 'swatch'});
  sw.style.background = COLORS[i % COLORS.length];
  label.append(box, sw, document.createTextNode('head ' + h));
  controls.appendChild(label);
});
view.appendChild(controls);
const rowH = 20, width = 420;
const svg = svgEl('svg', {id: 'headview', width: width, height: rowH * D.tokens.length + 10});
view.appendChild(svg);

function drawHeads() {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const P = D.patterns[layer];
  const T = D.tokens.length, Tk = D.key_tokens.length;
  const xl = 130, xr = width - 130;
  D.heads.forEach((h, hi) => {
    if (!shown.has(hi)) return;
    for (let i = 0; i < T; i++) {
      if (focus !== null && focus !== i) continue;
      for (let j = 0; j < Tk; j++) {
        const w = P[hi][i][j];
        if (w < 0.02) continue;
        svg.appendChild(svgEl('line', {x1: xl, y1: rowH * i + 14, x2: xr, y2: rowH * j + 14,
          stroke: COLORS[hi % COLORS.length], 'stroke-opacity': Math.min(1, w),
          'stroke-width': 2}));
      }
    }
  });
  D.tokens.forEach((t, i) => {
    const txt = svgEl('text', {x: xl - 6, y: rowH * i + 18, 'text-anchor': 'end',
      class: 'tok', 'data-row': i});
    txt.textContent = t;
    txt.style.fontWeight = focus === i ? '700' : '400';
    txt.onmouseenter = () => { focus = i; drawHeads(); };
    txt.onmouseleave = () => { focus = null; drawHeads(); };
    svg.appendChild(txt);
  });
  D.key_tokens.forEach((t, j) => {
    const txt = svgEl('text', {x: xr + 6, y: rowH * j + 18, class: 'tok'});
    txt.textContent = t;
    svg.appendChild(txt);
  });
}

view.appendChild(el('h2', {}, 'Model view (rows: layers, columns: heads; click one)'));
const grid = el('div', {class: 'models', id: 'modelview'});
grid.style.gridTemplateColumns = 'auto ' + D.heads.map(() => 'auto').join(' ');
const cells = [];
grid.appendChild(el('span', {}, ''));
D.heads.forEach(h => grid.appendChild(el('span', {}, 'head ' + h)));
for (const l of layers) {
  grid.appendChild(el('span', {}, 'layer ' + l));
  D.heads.forEach((h, hi) => {
    const P = D.patterns[l][hi];
    const T = P.length, Tk = P[0].length, s = Math.max(2, Math.floor(96 / Math.max(T, Tk)));
    const c = el('canvas', {width: Tk * s, height: T * s, title: 'layer ' + l + ', head ' + h});
    const ctx = c.getContext('2d');
    for (let i = 0; i < T; i++) for (let j = 0; j < Tk; j++) {
      const v = Math.round(255 * (1 - Math.min(1, P[i][j])));
      ctx.fillStyle = 'rgb(' + v + ',' + v + ',255)';
      ctx.fillRect(j * s, i * s, s, s);
    }
    c.onclick = () => {
      layer = l; select.value = String(l);
      shown = new Set([hi]);
      document.querySelectorAll('input[data-head]').forEach((b, bi) => { b.checked = bi === hi; });
      drawHeads(); markModel();
    };
    cells.push([l, c]);
    grid.appendChild(c);
  });
}
view.appendChild(grid);
function markModel() { for (const [l, c] of cells) c.classList.toggle('on', l === layer); }

if (D.rollout) {
  view.appendChild(el('h2', {}, 'Attention rollout (row: output position, column: input token)'));
  view.appendChild(table(D.rollout, D.tokens, D.key_tokens, v => v.toFixed(2), v => v));
}
function table(M, rows, cols, fmt, level) {
  const t = el('table', {class: 'grid'});
  const head = el('tr', {});
  head.appendChild(el('th', {}, ''));
  cols.forEach(c => head.appendChild(el('th', {class: 'tok'}, c)));
  t.appendChild(head);
  M.forEach((row, i) => {
    const tr = el('tr', {});
    tr.appendChild(el('th', {class: 'tok'}, rows[i]));
    row.forEach(v => {
      const td = el('td', {}, fmt(v));
      const a = Math.min(1, Math.max(0, level(v)));
      td.style.background = 'rgba(0,113,227,' + a.toFixed(3) + ')';
      td.style.color = a > 0.55 ? '#fff' : '#000';
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  return t;
}
drawHeads(); markModel();
document.body.dataset.ready = '1';
"""
)

GRID_JS = (
    PRELUDE_JS
    + r"""
D.grids.forEach((G, n) => {
  view.appendChild(el('h2', {}, G.title));
  if (G.note) view.appendChild(el('p', {class: 'note'}, G.note));
  const peak = Math.max(1e-9, ...G.values.flat().map(Math.abs));
  const t = el('table', {class: 'grid', id: 'grid-' + n});
  const head = el('tr', {});
  head.appendChild(el('th', {}, G.corner || ''));
  G.columns.forEach(c => head.appendChild(el('th', {class: 'tok'}, c)));
  t.appendChild(head);
  G.values.forEach((row, i) => {
    const tr = el('tr', {});
    tr.appendChild(el('th', {}, G.rows[i]));
    row.forEach((v, j) => {
      const td = el('td', {class: 'tok'}, G.labels ? G.labels[i][j] : v.toFixed(2));
      td.title = G.tips ? G.tips[i][j] : v.toFixed(4);
      const a = G.signed ? Math.abs(v) / peak : Math.min(1, Math.max(0, v));
      const rgb = G.signed && v < 0 ? '214,39,40' : '0,113,227';
      td.style.background = 'rgba(' + rgb + ',' + a.toFixed(3) + ')';
      td.style.color = a > 0.55 ? '#fff' : '#000';
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
  view.appendChild(t);
});
document.body.dataset.ready = '1';
"""
)

SALIENCY_JS = (
    PRELUDE_JS
    + r"""
D.examples.forEach((ex, n) => {
  view.appendChild(el('h2', {}, ex.title));
  if (ex.note) view.appendChild(el('p', {class: 'note'}, ex.note));
  const peak = Math.max(1e-9, ...ex.scores.map(Math.abs));
  const p = el('div', {class: 'sal', id: 'example-' + n});
  ex.tokens.forEach((tok, i) => {
    const v = ex.scores[i], a = Math.abs(v) / peak;
    const s = el('span', {class: 'tok', title: v.toFixed(4)}, tok);
    const rgb = v >= 0 ? '44,160,44' : '214,39,40';
    s.style.background = 'rgba(' + rgb + ',' + (0.85 * a).toFixed(3) + ')';
    p.appendChild(s);
  });
  view.appendChild(p);
});
document.body.dataset.ready = '1';
"""
)

SCRIPTS = {"attention": ATTENTION_JS, "grid": GRID_JS, "saliency": SALIENCY_JS}


def page(kind: str, title: str, data: dict[str, Any], notes: list[str] | None = None) -> str:
    """One self-contained HTML page of view `kind` ("attention", "grid" or "saliency")."""
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False)
    payload = payload.replace("</", "<\\/")  # never close the script block early
    paras = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes or [])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f'<body><h1>{html.escape(title)}</h1>{paras}<div id="view"></div>\n'
        f'<script type="application/json" id="data">{payload}</script>\n'
        f"<script>{SCRIPTS[kind]}</script></body></html>\n"
    )


def write_page(
    path: str | Path, kind: str, title: str, data: dict[str, Any], notes: list[str] | None = None
) -> Path:
    """Write `page(...)` atomically to `path`."""
    path = Path(path)
    atomic_write_text(path, page(kind, title, data, notes))
    return path
