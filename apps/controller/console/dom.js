// DOM helpers of the console: elements built from data (never HTML strings), and formatting.

/**
 * An element: `h('a', { href, class: 'x', onclick }, 'text', child)`. Props starting with `on`
 * are listeners, `class` and `data-*`/`aria-*` are attributes, anything else is a property.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class' || key.startsWith('data-') || key.startsWith('aria-')) el.setAttribute(key, value === true ? '' : String(value));
    else el[key] = value;
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Calls `fn` now and then every `ms` after it settles, until `signal` aborts. */
export function every(ms, fn, signal) {
  let timer;
  const tick = async () => {
    try {
      await fn();
    } finally {
      if (!signal.aborted) timer = setTimeout(tick, ms);
    }
  };
  signal.addEventListener('abort', () => clearTimeout(timer));
  void tick();
}

/** 75 -> "1 min 15 s"; null -> "unknown". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return 'unknown';
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** An ISO time as the browser's local time, or a dash. */
export function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : '–';
}

/** A status badge (its class is the status, for the stylesheet and the tests). */
export function badge(status) {
  return h('span', { class: `badge ${status}`, 'data-status': status }, status);
}

/** A table of rows: `columns` are [heading, row => cell content]. */
export function table(columns, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h(
    'table',
    {},
    h('thead', {}, h('tr', {}, columns.map(([heading]) => h('th', {}, heading)))),
    h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(row)))))),
  );
}
