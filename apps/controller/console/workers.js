// The workers page: the registered workers with their state and lease (GET /v1/workers), every 2 s.
import { api } from './api.js';
import { badge, every, h, table, time } from './dom.js';

const COLUMNS = [
  ['worker', (w) => h('span', {}, h('span', { class: 'mono' }, w.id), h('br'), h('span', { class: 'mono small' }, w.address))],
  ['state', (w) => badge(w.state)],
  [
    'lease',
    (w) =>
      w.lease
        ? h('span', {}, 'job ', h('a', { href: `#/jobs/${w.lease.job}`, class: 'mono' }, w.lease.job.slice(0, 8)), `, expires in ${(w.lease.expiresInMs / 1000).toFixed(1)} s`, h('br'), h('span', { class: 'mono small' }, `run ${w.lease.run}`))
        : '–',
  ],
  ['sessions', (w) => `${w.sessions} / ${w.capacity}`],
  ['models', (w) => w.models.join(', ')],
  ['backend', (w) => (w.gpu ? h('span', {}, w.backend, h('br'), h('span', { class: 'small' }, `GPU ${w.gpu.index}: ${w.gpu.name}`)) : w.backend)],
  [
    'placement',
    (w) =>
      h('span', { class: 'mono small wrap' }, `host ${w.host ?? '–'}`, h('br'), `NVLink ${w.nvlinkDomain ?? '–'}`, h('br'), `link ${w.linkGbps === null ? '–' : `${w.linkGbps} Gb/s`}`),
  ],
  ['numerics', (w) => h('span', { class: 'mono small wrap' }, w.numerics)],
  ['started', (w) => time(w.startedAt)],
];

export function workersView(root, { signal }) {
  const list = h('div', { id: 'workers' });
  const status = h('p', { class: 'hint' });
  root.append(h('h2', {}, 'Workers'), list, status);
  every(
    2000,
    async () => {
      try {
        const { items } = await api('GET', '/v1/workers');
        list.replaceChildren(table(COLUMNS, items, 'No workers registered.'));
        const leased = items.filter((w) => w.lease).length;
        status.textContent = `${items.length} registered, ${leased} leased. Updated ${new Date().toLocaleTimeString()}.`;
      } catch (err) {
        status.textContent = `Could not list workers: ${err.message}`;
      }
    },
    signal,
  );
}
