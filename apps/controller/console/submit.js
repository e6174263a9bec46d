// The submit page: a form generated from the OpenAPI document's POST /v1/videos body schema (the
// controller's field table), so every field the API takes is here and nothing else. The API
// validates; its 400 {error, message, field} is shown at the field it names.
import { api, ApiError, submitOperation } from './api.js';
import { h } from './dom.js';

/**
 * The input for one field, by its JSON schema: a select for an enum or a boolean, a text area for
 * free text (a body string without a pattern), else a one-line text input. Numbers are typed as
 * text too: the API judges them.
 */
function input(name, spec, { multiline = spec.type === 'string' && !spec.pattern } = {}) {
  const common = { id: `field-${name}`, name, 'data-type': spec.type, 'aria-describedby': `help-${name}` };
  const choices = spec.enum ?? (spec.type === 'boolean' ? ['true', 'false'] : null);
  if (choices) return h('select', common, h('option', { value: '' }, '(default)'), choices.map((v) => h('option', { value: String(v) }, String(v))));
  if (multiline) return h('textarea', { ...common, rows: 2, placeholder: spec.example ?? '' });
  const numeric = spec.type === 'number' || spec.type === 'integer';
  return h('input', {
    ...common,
    type: 'text',
    inputMode: spec.type === 'integer' ? 'numeric' : numeric ? 'decimal' : 'text',
    placeholder: spec.example ?? (spec.minimum !== undefined ? `${spec.minimum}..${spec.maximum}` : ''),
    autocomplete: 'off',
  });
}

/** The field's value for the body: undefined when left empty (the API's default applies). */
function value(el) {
  const raw = el.value.trim();
  if (raw === '') return undefined;
  if (el.dataset.type === 'number' || el.dataset.type === 'integer') {
    const n = Number(raw);
    return Number.isFinite(n) ? n : raw; // not a number: sent as typed, so the API names the field
  }
  if (el.dataset.type === 'boolean') return raw === 'true';
  return el.value;
}

function fieldRow(name, spec, control) {
  return h(
    'div',
    { class: 'field', 'data-field': name },
    h('label', { htmlFor: control.id }, name, h('span', { class: 'type' }, spec.enum ? spec.enum.join(' | ') : spec.type)),
    control,
    h('small', { id: `help-${name}`, class: 'help' }, spec.description ?? ''),
    h('small', { class: 'field-error', role: 'alert' }),
  );
}

export async function submitView(root) {
  const [op, models] = await Promise.all([submitOperation(), api('GET', '/v1/models').catch(() => ({ items: [] }))]);
  const list = h('datalist', { id: 'models' }, models.items.filter((m) => m.catalog).map((m) => h('option', { value: m.name })));
  const bodyFields = Object.entries(op.body.properties).map(([name, spec]) => {
    const control = input(name, spec);
    if (name === 'model') control.setAttribute('list', 'models');
    return { name, control, row: fieldRow(name, spec, control) };
  });
  const headerFields = op.headers.map((p) => {
    const control = input(p.name, { type: 'string', description: p.description }, { multiline: false });
    return { name: p.name, control, row: fieldRow(p.name, { type: 'header', description: p.description }, control) };
  });
  const banner = h('p', { class: 'error', id: 'submit-error', role: 'alert', hidden: true });
  const button = h('button', { type: 'submit', id: 'submit-button' }, 'Submit');

  const showError = (err) => {
    banner.hidden = false;
    banner.textContent = err.message;
    const row = root.querySelector(`.field[data-field="${CSS.escape(err.field ?? '')}"]`);
    if (row) {
      row.classList.add('invalid');
      row.querySelector('.field-error').textContent = err.message;
      row.querySelector('[name]').setAttribute('aria-invalid', 'true');
      row.querySelector('[name]').focus();
    }
  };
  const clearErrors = () => {
    banner.hidden = true;
    for (const row of root.querySelectorAll('.field.invalid')) {
      row.classList.remove('invalid');
      row.querySelector('.field-error').textContent = '';
      row.querySelector('[name]').removeAttribute('aria-invalid');
    }
  };

  const form = h(
    'form',
    {
      id: 'submit-form',
      noValidate: true,
      async onsubmit(e) {
        e.preventDefault();
        clearErrors();
        const body = {};
        for (const f of bodyFields) {
          const v = value(f.control);
          if (v !== undefined) body[f.name] = v;
        }
        const headers = {};
        for (const f of headerFields) if (f.control.value !== '') headers[f.name] = f.control.value;
        button.disabled = true;
        try {
          const job = await api('POST', '/v1/videos', { body, headers });
          location.hash = `#/jobs/${job.id}`;
        } catch (err) {
          showError(err instanceof ApiError ? err : { message: `request failed: ${err.message}` });
        } finally {
          button.disabled = false;
        }
      },
    },
    h('fieldset', {}, h('legend', {}, 'Body of POST /v1/videos'), bodyFields.map((f) => f.row)),
    headerFields.length ? h('fieldset', {}, h('legend', {}, 'Headers'), headerFields.map((f) => f.row)) : null,
    banner,
    button,
  );
  root.append(h('h2', {}, 'Submit a video'), h('p', { class: 'hint' }, 'Empty fields are left out: the API applies its defaults.'), list, form);
}
