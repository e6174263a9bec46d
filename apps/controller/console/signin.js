// The sign-in form: shown in place of any page the API answered 401 for.
import { signIn } from './api.js';
import { h } from './dom.js';

/** Renders the form into `section`; `done` runs once the session cookie is set. */
export function signInView(section, message, done) {
  const input = h('input', { name: 'key', type: 'password', autocomplete: 'off', required: true, placeholder: 'lsk_...', spellcheck: false });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const form = h(
    'form',
    {
      id: 'signin-form',
      onsubmit: async (e) => {
        e.preventDefault();
        error.hidden = true;
        try {
          await signIn(input.value.trim());
          input.value = '';
          done();
        } catch (err) {
          error.textContent = err.message;
          error.hidden = false;
        }
      },
    },
    h('h2', {}, 'Sign in'),
    h('p', {}, message),
    h('label', {}, 'API key ', input),
    h('button', { id: 'signin-button', type: 'submit' }, 'Sign in'),
    error,
  );
  section.replaceChildren(form);
  input.focus();
}
