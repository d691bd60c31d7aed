// The proxy's connection registry. The registry lives in each `bellwether proxy`'s admin API,
// which needs the proxy's own token; the server keeps that token for the patches it drives
// and reads the registry for a viewer (GET /api/v1/patches/{id}/connections). So the page
// lists the proxies the stored patches name, and shows one patch's proxy: its backends and
// every client connection. It reloads on that patch's events and on the Refresh button
// (connections come and go without events; nothing polls).
import { register, api, h, fmt, liveLoad } from '../app.js';
import { useKindsStyles } from '../lib/graph.js';

const when = fmt.time;
const bytes = (n) => (n == null ? '—' : n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`);
const yes = (b) => (b == null ? '—' : b ? 'yes' : 'no');

function table(test, headers, rows) {
  return h('table', { 'data-test': test, class: 'kinds-table' },
    h('thead', {}, h('tr', {}, ...headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, ...rows));
}

async function renderList(el) {
  const patches = await api('/api/v1/patches');
  el.replaceChildren(
    h('h2', {}, 'Proxies'),
    h('p', {}, 'The proxies the server drives, one per patch: choose one to see its connection registry.'),
    patches.length === 0
      ? h('p', { 'data-test': 'proxy-empty' }, 'No patch names a proxy yet.')
      : table('proxy-patches', ['patch', 'host', 'stage'], patches.map((p) => h('tr', { 'data-test': 'proxy-patch-row', 'data-id': p.id },
        h('td', {}, h('a', { href: `#/proxy/${encodeURIComponent(p.id)}`, 'data-test': 'proxy-link' }, p.id)),
        h('td', {}, p.host || '—'), h('td', {}, p.stage)))),
  );
}

async function renderOne(el, id, reload) {
  const refresh = h('button', { 'data-test': 'proxy-refresh' }, 'Refresh');
  refresh.addEventListener('click', reload);
  const head = [
    h('p', {}, h('a', { href: '#/proxy' }, '← all proxies'), ' · ', h('a', { href: `#/patches/${encodeURIComponent(id)}` }, `patch ${id}`)),
    h('h2', {}, `Proxy of patch ${id}`),
  ];
  let reg;
  try {
    reg = await api(`/api/v1/patches/${encodeURIComponent(id)}/connections`);
  } catch (e) {
    el.replaceChildren(...head, refresh,
      h('p', { class: 'error', 'data-test': 'proxy-error' }, `The registry cannot be read (${e.status}): ${e.message}`));
    return;
  }
  const conns = reg.connections || [];
  const backends = reg.backends || [];
  el.replaceChildren(
    ...head,
    h('p', {}, `admin API ${reg.admin_url}; read ${when(Date.now())} `, refresh),
    h('h3', {}, 'Backends'),
    table('proxy-backends', ['name', 'address', 'role', 'weight', 'admin', 'healthy', 'ejected', 'sessions', 'queries', 'errors', 'p99'],
      backends.map((b) => {
        const m = b.metrics || {};
        return h('tr', { 'data-test': 'proxy-backend', 'data-name': b.name },
          h('td', {}, b.name), h('td', {}, b.address || '—'), h('td', {}, b.role || '—'), h('td', {}, String(b.weight ?? '—')),
          h('td', {}, b.admin || '—'), h('td', {}, yes(b.healthy)), h('td', {}, yes(b.ejected)),
          h('td', {}, String(m.active_connections ?? '—')), h('td', {}, String(m.queries ?? '—')), h('td', {}, String(m.query_errors ?? '—')),
          h('td', {}, m.query_p99_seconds != null ? `${(m.query_p99_seconds * 1000).toFixed(2)} ms` : '—'));
      })),
    h('h3', {}, `Connections (${conns.length})`),
    conns.length === 0 ? h('p', { 'data-test': 'proxy-no-connections' }, 'No client is connected.')
      : table('proxy-connections', ['id', 'client', 'listener', 'protocol', 'backend', 'since', 'to backend', 'to client', 'in transaction', 'busy', 'state held', 're-homes'],
        conns.map((c) => h('tr', { 'data-test': 'proxy-connection', 'data-backend': c.backend || '' },
          h('td', {}, String(c.id)), h('td', {}, c.client), h('td', {}, c.listener || '—'), h('td', {}, c.protocol || '—'),
          h('td', {}, c.backend || '—'), h('td', {}, when(c.since_unix_ms)), h('td', {}, bytes(c.bytes_to_backend)),
          h('td', {}, bytes(c.bytes_to_client)), h('td', {}, yes(c.in_transaction)), h('td', {}, yes(c.busy)),
          h('td', {}, c.stateful || 'no'),
          h('td', {}, String(c.rehomes ?? 0))))),
  );
}

register('proxy', {
  title: 'Proxy',
  render(el, ctx) {
    useKindsStyles();
    const id = ctx && ctx.arg ? ctx.arg : null;
    return liveLoad(el, (reload) => (id ? renderOne(el, id, reload) : renderList(el)),
      (ev) => ev.kind && ev.kind.startsWith('patch.') && (!id || ev.task === id));
  },
});
