// A small SVG graph around one node: layered by distance from the centre (rings), edges
// coloured by kind and drawn as thick and opaque as their confidence. No dependencies.
//
// renderGraph({nodes, edges, center, selected, onSelect, width, height}) -> <svg>
//   nodes: [{name, value, ...}], edges: [{from, to, kind, confidence, ...}]
//   onSelect(name) is called when a node is clicked (the page re-centres on it).

const NS = 'http://www.w3.org/2000/svg';

export const EDGE_COLOURS = {
  requires: '#2563eb',
  conflicts_with: '#dc2626',
  influences: '#16a34a',
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) e.append(c);
  return e;
}

/// Hop distance of every node from `center`, over edges taken both ways. Nodes out of
/// reach get one ring beyond the farthest.
export function layers(nodes, edges, center) {
  const adj = new Map(nodes.map((n) => [n.name, []]));
  for (const e of edges) {
    if (adj.has(e.from) && adj.has(e.to)) {
      adj.get(e.from).push(e.to);
      adj.get(e.to).push(e.from);
    }
  }
  const dist = new Map();
  if (adj.has(center)) {
    dist.set(center, 0);
    const queue = [center];
    while (queue.length) {
      const n = queue.shift();
      for (const m of adj.get(n)) {
        if (!dist.has(m)) {
          dist.set(m, dist.get(n) + 1);
          queue.push(m);
        }
      }
    }
  }
  const far = Math.max(0, ...dist.values()) + 1;
  for (const n of nodes) if (!dist.has(n.name)) dist.set(n.name, far);
  return dist;
}

/// Positions: the centre in the middle, each further layer on a ring, names in a layer
/// ordered so neighbours of the same parent sit together (then by name): a stable picture.
export function layout(nodes, edges, center, width, height) {
  const dist = layers(nodes, edges, center);
  const byLayer = new Map();
  for (const n of nodes) {
    const d = dist.get(n.name);
    if (!byLayer.has(d)) byLayer.set(d, []);
    byLayer.get(d).push(n.name);
  }
  const maxLayer = Math.max(0, ...byLayer.keys());
  const cx = width / 2;
  const cy = height / 2;
  const step = (Math.min(width, height) / 2 - 60) / Math.max(1, maxLayer);
  const pos = new Map();
  const angleOf = new Map();
  for (const d of [...byLayer.keys()].sort((a, b) => a - b)) {
    const names = byLayer.get(d);
    if (d === 0 && names.length === 1) {
      pos.set(names[0], { x: cx, y: cy });
      angleOf.set(names[0], 0);
      continue;
    }
    // Order by the mean angle of the already placed neighbours, then by name.
    const parentAngle = (name) => {
      const as = edges
        .filter((e) => e.from === name || e.to === name)
        .map((e) => (e.from === name ? e.to : e.from))
        .filter((m) => angleOf.has(m))
        .map((m) => angleOf.get(m));
      return as.length ? as.reduce((a, b) => a + b, 0) / as.length : 0;
    };
    names.sort((a, b) => parentAngle(a) - parentAngle(b) || a.localeCompare(b));
    const r = step * Math.max(d, 0.0001);
    names.forEach((name, i) => {
      const a = (2 * Math.PI * i) / names.length + (d % 2 ? 0 : Math.PI / names.length);
      angleOf.set(name, a);
      pos.set(name, { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) });
    });
  }
  return pos;
}

function short(name) {
  return name.length > 28 ? name.slice(0, 27) + '…' : name;
}

export function renderGraph({ nodes, edges, center, selected, onSelect, width = 760, height = 560 }) {
  const pos = layout(nodes, edges, center, width, height);
  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width: '100%',
    role: 'img',
    'aria-label': `graph around ${center}`,
    'data-test': 'config-graph',
    class: 'kinds-graph',
  });
  const defs = el('defs');
  for (const [kind, colour] of Object.entries(EDGE_COLOURS)) {
    defs.append(
      el(
        'marker',
        { id: `arrow-${kind}`, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        el('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: colour }),
      ),
    );
  }
  svg.append(defs);
  const R = 7;
  const edgeLayer = el('g');
  for (const e of edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    if (!a || !b) continue;
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = Math.hypot(dx, dy) || 1;
    const conf = typeof e.confidence === 'number' ? e.confidence : 0.5;
    const colour = EDGE_COLOURS[e.kind] || '#6b7280';
    const line = el('line', {
      x1: a.x + (dx / len) * R,
      y1: a.y + (dy / len) * R,
      x2: b.x - (dx / len) * (R + 2),
      y2: b.y - (dy / len) * (R + 2),
      stroke: colour,
      'stroke-width': 1 + 2.5 * conf,
      'stroke-opacity': 0.25 + 0.75 * conf,
      'stroke-dasharray': e.kind === 'influences' ? '5 3' : null,
      'marker-end': `url(#arrow-${e.kind in EDGE_COLOURS ? e.kind : 'influences'})`,
      'data-test': 'graph-edge',
      'data-kind': e.kind,
      'data-from': e.from,
      'data-to': e.to,
      'data-confidence': conf,
    });
    line.append(el('title', {}, `${e.from} ${e.kind} ${e.to} (confidence ${conf.toFixed(2)})`));
    edgeLayer.append(line);
  }
  svg.append(edgeLayer);
  const nodeLayer = el('g');
  for (const n of nodes) {
    const p = pos.get(n.name);
    const isMetric = n.name.startsWith('metric:');
    const isCenter = n.name === center;
    const g = el('g', {
      transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`,
      'data-test': 'graph-node',
      'data-name': n.name,
      'data-center': isCenter ? 'true' : null,
      class: 'kinds-graph-node' + (n.name === selected ? ' selected' : ''),
      tabindex: 0,
      style: 'cursor:pointer',
    });
    g.append(
      el(isMetric ? 'rect' : 'circle', isMetric
        ? { x: -R, y: -R, width: 2 * R, height: 2 * R, fill: '#f59e0b', stroke: '#111', 'stroke-width': isCenter ? 3 : 1 }
        : { r: isCenter ? R + 3 : R, fill: isCenter ? '#111827' : '#e5e7eb', stroke: '#111', 'stroke-width': n.name === selected ? 3 : 1 }),
    );
    const label = el('text', {
      y: -(R + 5),
      'text-anchor': 'middle',
      'font-size': isCenter ? 13 : 11,
      'font-weight': isCenter ? 'bold' : 'normal',
      fill: '#111827',
    }, short(n.name));
    g.append(label);
    g.append(el('title', {}, `${n.name}${n.value != null ? ' = ' + n.value : ''}`));
    const pick = () => onSelect && onSelect(n.name);
    g.addEventListener('click', pick);
    g.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') pick();
    });
    nodeLayer.append(g);
  }
  svg.append(nodeLayer);
  return svg;
}

/// The legend: one swatch per edge kind.
export function legend() {
  const div = document.createElement('div');
  div.className = 'kinds-legend';
  div.setAttribute('data-test', 'graph-legend');
  for (const [kind, colour] of Object.entries(EDGE_COLOURS)) {
    const s = document.createElement('span');
    s.style.marginRight = '1em';
    s.innerHTML = `<svg width="28" height="8"><line x1="0" y1="4" x2="28" y2="4" stroke="${colour}" stroke-width="3" ${kind === 'influences' ? 'stroke-dasharray="5 3"' : ''}/></svg> `;
    s.append(kind);
    div.append(s);
  }
  const n = document.createElement('span');
  n.append('thicker and darker: higher confidence; squares are metrics');
  div.append(n);
  return div;
}

/// The few rules the per-kind pages need beside the shell's style.css, added once.
export function useKindsStyles() {
  if (document.getElementById('kinds-styles')) return;
  const s = document.createElement('style');
  s.id = 'kinds-styles';
  s.textContent = `
.kinds-facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; }
.kinds-facts dt { color: var(--muted, #666); }
.kinds-facts dd { margin: 0; }
.kinds-actions { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 10px 0; }
.kinds-actions .action-out { flex-basis: 100%; }
.kinds-table { margin-bottom: 12px; }
tr.alert td { background: #fff4e0; }
.kinds-graph { background: #fff; border: 1px solid var(--line, #ddd); border-radius: 4px; max-height: 620px; }
.kinds-graph-node:focus { outline: none; }
.kinds-graph-node.selected circle { stroke: #2563eb; }
.kinds-legend { font-size: 12px; margin: 4px 0; }
.kinds-node-detail h4 { margin: 8px 0 2px; }
`;
  document.head.append(s);
}
