// Configuration: the sources agents report; for a PostgreSQL source an interactive graph of
// its settings around one setting (click a node to re-centre on it), the change stream and
// the snapshots, with "take a snapshot" and "restore" for operators.
//
// Route: #/config, or #/config/HOST,SOURCE[,KEY[,DEPTH]]: each part percent-encoded on its
// own (a comma, slash, `#`, `%`… inside a setting's name is encoded), so the page splits the
// argument as written (the router's `rawArg`) on its commas before it decodes each part.
import { register, api, h, fmt, keptResult, liveLoad } from '../app.js';
import { renderGraph, legend, useKindsStyles } from '../lib/graph.js';

const when = fmt.time;
const q = encodeURIComponent;

/** The address of a source's page centred on `key` (optional) at `depth` (optional, 2 if absent). */
export function configRoute(host, source, key, depth) {
  const parts = [host, source];
  if (key || depth) parts.push(key || '');
  if (depth) parts.push(String(depth));
  return `#/config/${parts.map(q).join(',')}`;
}

/** The parts of a `configRoute` argument as written: `[host, source, key, depth]`, decoded. */
export function configParts(rawArg) {
  if (!rawArg) return [];
  return rawArg.split(',').map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p; // not valid percent-encoding: taken as typed
    }
  });
}

const route = (host, source, key) => configRoute(host, source, key);

function table(test, headers, rows) {
  return h('table', { 'data-test': test, class: 'kinds-table' },
    h('thead', {}, h('tr', {}, ...headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, ...rows));
}

const val = (v) => (v == null ? 'unset' : typeof v === 'object' ? JSON.stringify(v) : String(v));

function changesTable(changes) {
  return changes.length === 0 ? h('p', { 'data-test': 'config-no-changes' }, 'No change recorded yet.')
    : table('config-changes', ['at', 'host', 'source', 'key', 'old', 'new', 'by', 'how'], changes.map((e) => {
      const f = e.figures || {};
      return h('tr', { 'data-test': 'config-change', 'data-key': f.key || '' },
        h('td', {}, when(f.time_ms || e.ts_ms)), h('td', {}, f.host || e.host || '—'), h('td', {}, f.source_name || '—'),
        h('td', {}, f.key || '—'), h('td', {}, val(f.old)), h('td', {}, val(f.new)), h('td', {}, f.author || '—'),
        h('td', {}, f.source || '—'));
    }));
}

async function renderSources(el) {
  const [sources, changes] = await Promise.all([api('/api/v1/config/sources'), api('/api/v1/config/changes?limit=30')]);
  el.replaceChildren(
    h('h2', {}, 'Configuration'),
    sources.length === 0 ? h('p', { 'data-test': 'config-empty' }, 'No agent reports a configuration yet (agent --database NAME=URL or --config-file PATH).')
      : table('config-sources', ['host', 'source', 'kind', 'keys', 'graph version', 'updated'], sources.map((s) => h('tr', { 'data-test': 'config-source', 'data-host': s.host, 'data-source': s.source },
        h('td', {}, s.host),
        h('td', {}, s.kind === 'postgres' ? h('a', { href: route(s.host, s.source), 'data-test': 'config-source-link' }, s.source) : s.source),
        h('td', {}, s.kind), h('td', {}, String(s.keys)), h('td', {}, s.graph_version == null ? 'none yet' : String(s.graph_version)), h('td', {}, when(s.updated_ms))))),
    h('h3', {}, 'Latest changes'),
    changesTable(changes),
  );
}

/// The setting to centre on when none is chosen: the latest changed setting that is in the
/// graph, else the setting with the most edges.
function defaultCenter(graph, changes) {
  const names = new Set(graph.nodes.map((n) => n.name));
  for (const e of changes) if (e.figures && names.has(e.figures.key)) return e.figures.key;
  const degree = new Map();
  for (const e of graph.edges) for (const n of [e.from, e.to]) degree.set(n, (degree.get(n) || 0) + 1);
  let best = null;
  for (const [n, d] of degree) if (!n.startsWith('metric:') && (best === null || d > degree.get(best) || (d === degree.get(best) && n < best))) best = n;
  return best || (graph.nodes[0] && graph.nodes[0].name);
}

async function renderSource(el, host, source, key, depth) {
  const hs = `host=${q(host)}&source=${q(source)}`;
  const [changes, snapshots] = await Promise.all([
    api(`/api/v1/config/changes?${hs}&limit=50`),
    api(`/api/v1/config/snapshots?${hs}`),
  ]);
  let graph = null, graphError = null, center = key;
  try {
    if (!center) {
      const whole = await api(`/api/v1/config/graph?${hs}`);
      center = defaultCenter(whole, changes);
    }
    if (center) graph = await api(`/api/v1/config/graph?${hs}&around=${q(center)}&depth=${depth}`);
  } catch (e) {
    graphError = e;
  }
  const result = keptResult(`config:${host},${source}`);
  const act = async (what, path, body) => {
    result.set('asking…');
    try {
      const r = await api(path, { method: 'POST', body });
      result.set(`${what}: ${r.id || ''}${r.phase ? ' (' + r.phase + ')' : ''}`);
    } catch (e) {
      result.fail(e);
    }
  };
  const snapBtn = h('button', { 'data-test': 'config-snapshot-take' }, 'Take a snapshot');
  snapBtn.addEventListener('click', () => act('snapshot taken', '/api/v1/config/snapshots', { host, source, reason: 'from the dashboard' }));

  const around = h('input', { 'data-test': 'graph-around', value: center || '', placeholder: 'setting' });
  const depthSel = h('select', { 'data-test': 'graph-depth' }, ...[1, 2, 3, 4].map((d) => h('option', { value: d, selected: d === depth ? '' : null }, `depth ${d}`)));
  const go = h('button', { 'data-test': 'graph-go' }, 'Centre');
  const goTo = (k) => {
    const d = Number(depthSel.value);
    location.hash = configRoute(host, source, k || null, d !== 2 ? d : null);
  };
  go.addEventListener('click', () => goTo(around.value.trim()));
  around.addEventListener('keydown', (e) => { if (e.key === 'Enter') goTo(around.value.trim()); });

  let graphPart;
  if (graphError) {
    graphPart = h('p', { class: 'error', 'data-test': 'graph-error' }, `The graph cannot be shown (${graphError.status}): ${graphError.message}`);
  } else if (!graph || graph.nodes.length === 0) {
    graphPart = h('p', { 'data-test': 'graph-empty' }, center ? `${center} has no edge in this source's graph.` : 'This source has no graph yet.');
  } else {
    const detail = h('div', { class: 'kinds-node-detail', 'data-test': 'graph-detail' });
    const showNode = (name) => {
      const n = graph.nodes.find((x) => x.name === name) || { name };
      const edges = graph.edges.filter((e) => e.from === name || e.to === name);
      detail.replaceChildren(
        h('h4', { 'data-test': 'graph-detail-name' }, name),
        h('p', {}, `value ${val(n.value)}${n.context ? ', context ' + n.context : ''}; last changed ${when(n.time_ms)}${n.author ? ' by ' + n.author : ''}`),
        table('graph-detail-edges', ['from', 'kind', 'to', 'confidence', 'evidence'], edges.map((e) => h('tr', { 'data-test': 'graph-detail-edge', 'data-kind': e.kind },
          h('td', {}, e.from), h('td', {}, e.kind), h('td', {}, e.to), h('td', {}, (e.confidence ?? 0).toFixed(2)),
          h('td', {}, (e.evidence || []).map((x) => `${x.source}: ${x.detail}`).join('; '))))),
      );
    };
    const svg = renderGraph({ nodes: graph.nodes, edges: graph.edges, center, selected: center, onSelect: (name) => goTo(name) });
    showNode(center);
    // Hovering a node shows its details; clicking re-centres the graph on it.
    svg.querySelectorAll('[data-test="graph-node"]').forEach((g) => g.addEventListener('mouseenter', () => showNode(g.getAttribute('data-name'))));
    graphPart = h('div', { class: 'kinds-graph-wrap' },
      h('p', { 'data-test': 'graph-caption' }, `Version ${graph.version}: ${graph.nodes.length} settings and metrics, ${graph.edges.length} edges within ${depth} of `, h('b', { 'data-test': 'graph-center' }, center), '. Click a node to centre on it.'),
      legend(), svg, detail);
  }

  el.replaceChildren(
    h('p', {}, h('a', { href: '#/config' }, '← all sources')),
    h('h2', {}, `${source} on ${host}`),
    h('div', { class: 'kinds-actions' }, around, depthSel, go),
    graphPart,
    h('h3', {}, 'Changes'),
    changesTable(changes),
    h('h3', {}, 'Snapshots'),
    h('div', { class: 'kinds-actions' }, snapBtn, result),
    snapshots.length === 0 ? h('p', { 'data-test': 'config-no-snapshots' }, 'No snapshot yet.')
      : table('config-snapshots', ['id', 'taken', 'reason', 'keys', 'whole', 'task', ''], snapshots.map((s) => {
        const b = h('button', { 'data-test': 'config-snapshot-restore', 'data-id': s.id }, 'Restore');
        b.addEventListener('click', () => act('restore started as task', `/api/v1/config/snapshots/${q(s.id)}/restore`, { description: `restore of snapshot ${s.id} from the dashboard` }));
        return h('tr', { 'data-test': 'config-snapshot', 'data-id': s.id },
          h('td', {}, String(s.id)), h('td', {}, when(s.taken_at_ms)), h('td', {}, s.reason || ''), h('td', {}, String(s.keys)),
          h('td', {}, s.whole ? 'yes' : 'NO: checksum differs'), h('td', {}, s.task || '—'), h('td', {}, b));
      })),
  );
}

register('config', {
  title: 'Configuration',
  render(el, ctx) {
    useKindsStyles();
    const parts = configParts(ctx && ctx.rawArg);
    const [host, source, key] = parts;
    const depth = Math.min(4, Math.max(1, Number(parts[3]) || 2));
    return liveLoad(el, () => (host && source ? renderSource(el, host, source, key || null, depth) : renderSources(el)), (ev) => {
      if (!ev.kind || !ev.kind.startsWith('config.')) return false;
      const f = ev.figures || {};
      const snapHost = f.snapshot && f.snapshot.host;
      return !host || ev.host === host || f.host === host || snapHost === host;
    });
  },
});
