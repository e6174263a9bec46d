// The console's router: one view per hash route, each rendered into a fresh section and stopped
// (its polls and event stream closed) when the route changes.
import { h } from './dom.js';
import { jobView } from './job.js';
import { jobsView } from './jobs.js';
import { signInView } from './signin.js';
import { submitView } from './submit.js';
import { workersView } from './workers.js';

const ROUTES = [
  { pattern: /^#\/submit$/, nav: 'submit', view: submitView },
  { pattern: /^#\/jobs$/, nav: 'jobs', view: jobsView },
  { pattern: /^#\/jobs\/([0-9a-f-]{36})$/, nav: 'jobs', view: jobView },
  { pattern: /^#\/workers$/, nav: 'workers', view: workersView },
];

let current = new AbortController();

async function route() {
  current.abort();
  current = new AbortController();
  const { signal } = current;
  const hash = location.hash || '#/submit';
  const match = ROUTES.map((r) => ({ r, m: r.pattern.exec(hash) })).find((x) => x.m);
  const section = h('section', { class: 'view' });
  document.getElementById('view').replaceChildren(section);
  for (const a of document.querySelectorAll('nav a[data-route]')) a.classList.toggle('active', a.dataset.route === match?.r.nav);
  if (!match) {
    section.append(h('p', { class: 'error' }, `No page ${hash}.`));
    return;
  }
  try {
    await match.r.view(section, { signal, params: match.m.slice(1) });
  } catch (err) {
    if (signal.aborted) return;
    // No session (or an expired one, or a revoked key): sign in, then show the page asked for.
    if (err.status === 401) signInView(section, 'Enter an API key (longshot keys create, or the one longshot up printed).', () => void route());
    else section.append(h('p', { class: 'error', role: 'alert' }, err.message));
  }
}

window.addEventListener('hashchange', route);
void route();
