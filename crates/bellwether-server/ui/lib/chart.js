// Hand-written SVG charts: a histogram (a distribution, such as the fleet's risk for an
// update) and a line with a band (a metric against its baseline band, drift over time).
// No library, no network: each function answers an <svg> element.

const NS = 'http://www.w3.org/2000/svg';

/** An SVG element with attributes and children. */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function text(x, y, s, attrs = {}) {
  return svg('text', { x, y, ...attrs }, s);
}

function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

const short = (v) => (Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v)) : String(Number(v.toPrecision(3))));

/**
 * A histogram of `values` over `domain` in `bins` equal bins.
 * opts: {domain: [lo, hi], bins, width, height, format(v) for the x ticks, xLabel, title,
 *        marks: [{value, label}] (dashed vertical lines), hot: v => bool (bins drawn red),
 *        test: the data-test attribute}
 */
export function histogram(values, opts = {}) {
  const width = opts.width ?? 420;
  const height = opts.height ?? 160;
  const bins = opts.bins ?? 10;
  const [lo, hi] = opts.domain ?? [Math.min(...values, 0), Math.max(...values, 1)];
  const format = opts.format ?? short;
  const m = { l: 34, r: 10, t: opts.title ? 22 : 10, b: opts.xLabel ? 36 : 22 };
  const w = width - m.l - m.r;
  const hgt = height - m.t - m.b;
  const counts = new Array(bins).fill(0);
  for (const v of values) {
    if (v === null || v === undefined || Number.isNaN(v)) continue;
    const i = Math.min(bins - 1, Math.max(0, Math.floor(((v - lo) / (hi - lo)) * bins)));
    counts[i] += 1;
  }
  const max = Math.max(1, ...counts);
  const x = (v) => m.l + ((v - lo) / (hi - lo)) * w;
  const y = (c) => m.t + hgt - (c / max) * hgt;
  const root = svg('svg', {
    class: 'chart histogram', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'img', 'aria-label': opts.title ?? 'histogram', 'data-test': opts.test ?? null,
  });
  if (opts.title) root.append(text(m.l, 14, opts.title, { 'font-weight': 600 }));
  for (const t of niceTicks(0, max, Math.min(4, max))) {
    root.append(svg('line', { class: 'grid', x1: m.l, x2: m.l + w, y1: y(t), y2: y(t) }));
    root.append(text(m.l - 4, y(t) + 4, short(t), { 'text-anchor': 'end' }));
  }
  const bw = w / bins;
  counts.forEach((c, i) => {
    const from = lo + ((hi - lo) * i) / bins;
    const to = lo + ((hi - lo) * (i + 1)) / bins;
    const hot = opts.hot ? opts.hot((from + to) / 2) : false;
    const rect = svg('rect', {
      class: hot ? 'barfill hot' : 'barfill', x: m.l + i * bw + 1, y: y(c), width: Math.max(1, bw - 2),
      height: m.t + hgt - y(c), 'data-count': c,
    }, svg('title', {}, `${format(from)}–${format(to)}: ${c}`));
    root.append(rect);
    if (c > 0) root.append(text(m.l + i * bw + bw / 2, y(c) - 3, c, { 'text-anchor': 'middle' }));
  });
  root.append(svg('line', { class: 'axis', x1: m.l, x2: m.l + w, y1: m.t + hgt, y2: m.t + hgt }));
  for (const t of niceTicks(lo, hi, 5)) {
    root.append(text(x(t), m.t + hgt + 14, format(t), { 'text-anchor': 'middle' }));
  }
  for (const mk of opts.marks ?? []) {
    root.append(svg('line', { class: 'mark', x1: x(mk.value), x2: x(mk.value), y1: m.t, y2: m.t + hgt }));
    if (mk.label) root.append(text(x(mk.value) + 3, m.t + 10, mk.label));
  }
  if (opts.xLabel) root.append(text(m.l + w / 2, height - 4, opts.xLabel, { 'text-anchor': 'middle' }));
  return root;
}

/**
 * A line of `points` ([{t, v}], t in ms) with an optional band: `band` is {lo, hi} for a
 * constant band or a function t => {lo, hi}. Points outside the band are drawn as red dots.
 * opts: {width, height, title, yLabel, format(v), marks: [{t, label}] (vertical lines),
 *        threshold: {value, label} (a horizontal line), bandLabel, test}
 */
export function lineBand(points, band, opts = {}) {
  const width = opts.width ?? 520;
  const height = opts.height ?? 180;
  const format = opts.format ?? short;
  const m = { l: 46, r: 12, t: opts.title ? 22 : 10, b: 24 };
  const w = width - m.l - m.r;
  const hgt = height - m.t - m.b;
  const pts = points.filter((p) => Number.isFinite(p.v) && Number.isFinite(p.t)).sort((a, b) => a.t - b.t);
  const bandAt = typeof band === 'function' ? band : () => band;
  const ys = pts.map((p) => p.v);
  for (const p of pts) {
    const b = bandAt(p.t);
    if (b) ys.push(b.lo, b.hi);
  }
  if (opts.threshold) ys.push(opts.threshold.value);
  let ylo = Math.min(...ys);
  let yhi = Math.max(...ys);
  if (!(yhi > ylo)) { ylo -= 1; yhi += 1; }
  const pad = (yhi - ylo) * 0.08;
  ylo -= pad; yhi += pad;
  const ts = pts.map((p) => p.t).concat((opts.marks ?? []).map((k) => k.t));
  let tlo = Math.min(...ts);
  let thi = Math.max(...ts);
  if (!(thi > tlo)) { tlo -= 1000; thi += 1000; }
  const x = (t) => m.l + ((t - tlo) / (thi - tlo)) * w;
  const y = (v) => m.t + hgt - ((v - ylo) / (yhi - ylo)) * hgt;
  const root = svg('svg', {
    class: 'chart lineband', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'img', 'aria-label': opts.title ?? 'line chart', 'data-test': opts.test ?? null,
  });
  if (opts.title) root.append(text(m.l, 14, opts.title, { 'font-weight': 600 }));
  for (const t of niceTicks(ylo, yhi, 4)) {
    root.append(svg('line', { class: 'grid', x1: m.l, x2: m.l + w, y1: y(t), y2: y(t) }));
    root.append(text(m.l - 4, y(t) + 4, format(t), { 'text-anchor': 'end' }));
  }
  if (pts.length && band) {
    const upper = pts.map((p) => { const b = bandAt(p.t); return `${x(p.t)},${y(b.hi)}`; });
    const lower = pts.slice().reverse().map((p) => { const b = bandAt(p.t); return `${x(p.t)},${y(b.lo)}`; });
    if (pts.length === 1) {
      const b = bandAt(pts[0].t);
      root.append(svg('rect', { class: 'band', x: m.l, width: w, y: y(b.hi), height: Math.max(1, y(b.lo) - y(b.hi)) }));
    } else {
      root.append(svg('polygon', { class: 'band', points: upper.concat(lower).join(' ') },
        svg('title', {}, opts.bandLabel ?? 'baseline band')));
    }
  }
  if (opts.threshold) {
    const yt = y(opts.threshold.value);
    root.append(svg('line', { class: 'mark', x1: m.l, x2: m.l + w, y1: yt, y2: yt }));
    if (opts.threshold.label) root.append(text(m.l + w - 2, yt - 3, opts.threshold.label, { 'text-anchor': 'end' }));
  }
  if (pts.length > 1) {
    root.append(svg('polyline', { class: 'line', points: pts.map((p) => `${x(p.t)},${y(p.v)}`).join(' ') }));
  }
  for (const p of pts) {
    const b = band ? bandAt(p.t) : null;
    const out = b && (p.v < b.lo || p.v > b.hi);
    if (out || pts.length === 1) {
      root.append(svg('circle', { class: out ? 'dot' : 'line', cx: x(p.t), cy: y(p.v), r: 3 },
        svg('title', {}, `${format(p.v)}${out ? ' (outside the band)' : ''}`)));
    }
  }
  for (const mk of opts.marks ?? []) {
    root.append(svg('line', { class: 'mark', x1: x(mk.t), x2: x(mk.t), y1: m.t, y2: m.t + hgt }));
    if (mk.label) root.append(text(x(mk.t) + 3, m.t + 10, mk.label));
  }
  root.append(svg('line', { class: 'axis', x1: m.l, x2: m.l + w, y1: m.t + hgt, y2: m.t + hgt }));
  const clock = (t) => { const d = new Date(t); return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}:${String(d.getSeconds()).padStart(2, '0')}`; };
  root.append(text(m.l, height - 6, clock(tlo)));
  root.append(text(m.l + w, height - 6, clock(thi), { 'text-anchor': 'end' }));
  if (opts.yLabel) root.append(text(m.l + w / 2, height - 6, opts.yLabel, { 'text-anchor': 'middle' }));
  return root;
}
