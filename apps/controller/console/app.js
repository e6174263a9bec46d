// The console's router: one view per hash route, each rendered into a fresh section and stopped
// (its polls and event stream closed) when the route changes; and the header's "signed in as".
import { signOut, whoAmI } from './api.js';
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
    if (err.status === 401) {
      showCaller(null);
      signInView(section, 'Enter an API key (longshot keys create, or the one longshot up printed).', () => {
        void refreshCaller();
        void route();
      });
    } else section.append(h('p', { class: 'error', role: 'alert' }, err.message));
  }
}

/** How many times the header was drawn: tells a stale answer of GET /v1/session. */
let callerShown = 0;

/**
 * The header for `caller` (`{tenant, role, keyId}`, or null when no one is signed in): who it is,
 * the operators' links (Workers, API, Queues) for an operator, and Sign out where there is a session (none with --no-auth).
 */
function showCaller(caller) {
  callerShown++;
  document.getElementById('caller').hidden = caller === null;
  document.getElementById('caller-tenant').textContent = caller?.tenant ?? '';
  document.getElementById('caller-role').textContent = caller?.role ?? '';
  // Workers, the API document and the queue board are operators' (a tenant key gets 403 there).
  for (const link of document.querySelectorAll('nav .operator-only')) link.hidden = caller?.role !== 'operator';
  document.getElementById('signout').hidden = !caller?.keyId;
}

/**
 * Asks the controller who the page is signed in as (no one on a 401 or any other failure). An
 * answer that arrives after the header changed (a later sign-in, a sign-out) is stale and dropped.
 */
async function refreshCaller() {
  const before = callerShown;
  const caller = await whoAmI().catch(() => null);
  if (callerShown === before) showCaller(caller);
}

/** Sign out: the controller expires the cookie, and the page asks for a key again. */
async function endSession() {
  try {
    await signOut();
  } catch (err) {
    document.getElementById('view').replaceChildren(h('p', { class: 'error', role: 'alert' }, `Signing out failed: ${err.message}`));
    return;
  }
  showCaller(null);
  void route();
}

document.getElementById('signout').addEventListener('click', () => void endSession());
window.addEventListener('hashchange', route);
void refreshCaller();
void route();
