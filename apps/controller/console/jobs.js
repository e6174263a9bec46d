// The jobs page: the queue (queued and running jobs, in the order they will run or started) and
// the recent finished jobs, from GET /v1/videos, refreshed every 2 s.
import { api, TERMINAL } from './api.js';
import { badge, every, h, table, time } from './dom.js';

const link = (job) => h('a', { href: `#/jobs/${job.id}`, class: 'mono' }, job.id.slice(0, 8));
const prompt = (job) => h('span', { class: 'prompt', title: job.spec.prompt }, job.spec.prompt || '(embeddings)');
const size = (job) => `${job.spec.width}x${job.spec.height}, ${job.spec.frames} frames`;
const progress = (job) => {
  const p = job.progress;
  return p.blockSteps ? h('span', {}, h('progress', { max: p.blockSteps, value: p.blockStepsDone }), h('br'), h('span', { class: 'small' }, `${p.blockStepsDone}/${p.blockSteps} steps, ${p.blocksDone}/${p.blocks} blocks stitched`)) : '–';
};

const QUEUE_COLUMNS = [
  ['job', link],
  ['status', (j) => badge(j.status)],
  ['priority', (j) => String(j.priority)],
  ['prompt', prompt],
  ['size', size],
  ['progress', progress],
  ['workers', (j) => j.workers.join(', ') || '–'],
  ['submitted', (j) => time(j.createdAt)],
];

const RECENT_COLUMNS = [
  ['job', link],
  ['status', (j) => badge(j.status)],
  ['prompt', prompt],
  ['size', size],
  ['took', (j) => (j.startedAt && j.finishedAt ? `${((Date.parse(j.finishedAt) - Date.parse(j.startedAt)) / 1000).toFixed(1)} s` : '–')],
  ['finished', (j) => time(j.finishedAt)],
  ['error', (j) => j.error?.message ?? ''],
];

export function jobsView(root, { signal }) {
  const queue = h('div', { id: 'queue' });
  const recent = h('div', { id: 'recent' });
  const status = h('p', { class: 'hint' });
  root.append(h('h2', {}, 'Queue'), queue, h('h2', {}, 'Recent jobs'), recent, status);
  every(
    2000,
    async () => {
      try {
        const page = await api('GET', '/v1/videos?limit=50');
        const active = page.items.filter((j) => !TERMINAL.includes(j.status));
        // Running first, then queued by priority (lower runs sooner), then by age.
        active.sort((a, b) => (a.status === b.status ? a.priority - b.priority || a.createdAt.localeCompare(b.createdAt) : a.status === 'running' ? -1 : 1));
        queue.replaceChildren(table(QUEUE_COLUMNS, active, 'Nothing queued or running.'));
        recent.replaceChildren(table(RECENT_COLUMNS, page.items.filter((j) => TERMINAL.includes(j.status)), 'No finished jobs yet.'));
        status.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
      } catch (err) {
        status.textContent = `Could not list jobs: ${err.message}`;
      }
    },
    signal,
  );
}
