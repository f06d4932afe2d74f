// Just enough HTML parsing to find forms, their fields and buttons.
// Regular expressions over tags: fine for the pages we control and for
// oidc-provider's, and every helper fails loudly with the page text when the
// expected form is not there.

const NAMED_ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0', '#39': "'" };

export function decodeEntities(s) {
  return String(s).replace(/&(#x[0-9a-f]+|#\d+|[a-z]+\d*);/gi, (m, e) => {
    if (e[0] === '#') {
      const code = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return Number.isFinite(code) ? String.fromCodePoint(code) : m;
    }
    const v = NAMED_ENTITIES[e.toLowerCase()];
    return v ?? m;
  });
}

/** Attributes from the inside of a start tag after its name, e.g. ` type="hidden" name=x`. */
export function parseAttributes(tag) {
  const attrs = {};
  const re = /([^\s"'<>\/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?/g;
  const body = String(tag);
  let m;
  while ((m = re.exec(body))) {
    const name = m[1].toLowerCase();
    if (name in attrs) continue; // HTML keeps the first occurrence
    const raw = m[2] ?? m[3] ?? m[4];
    attrs[name] = raw === undefined ? '' : decodeEntities(raw);
  }
  return attrs;
}

function stripComments(html) {
  return html.replace(/<!--[\s\S]*?-->/g, '');
}

/** Readable text of a page, for error messages. */
export function pageText(html, max = 2000) {
  if (html === undefined || html === null) return '(no body)';
  const text = decodeEntities(
    String(html)
      .replace(/<(script|style)\b[\s\S]*?<\/\1>/gi, ' ')
      .replace(/<[^>]+>/g, ' '),
  )
    .replace(/\s+/g, ' ')
    .trim();
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/**
 * Every <form> in the page:
 * { attrs, method, action (raw, may be undefined), inputs: [{...attrs}], buttons: [{...attrs}], html }
 */
export function parseForms(html) {
  const forms = [];
  const src = stripComments(String(html ?? ''));
  const formRe = /<form\b([^>]*)>([\s\S]*?)<\/form\s*>/gi;
  let m;
  while ((m = formRe.exec(src))) {
    const attrs = parseAttributes(m[1]);
    const inner = m[2];
    const inputs = [];
    const buttons = [];
    for (const t of inner.matchAll(/<input\b([^>]*)>/gi)) {
      const a = parseAttributes(t[1]);
      const type = (a.type ?? 'text').toLowerCase();
      if (type === 'submit' || type === 'image') buttons.push({ ...a, type });
      else inputs.push({ ...a, type });
    }
    for (const t of inner.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button\s*>/gi)) {
      const a = parseAttributes(t[1]);
      const type = (a.type ?? 'submit').toLowerCase();
      if (type === 'submit') buttons.push({ ...a, type, text: pageText(t[2], 200) });
    }
    for (const t of inner.matchAll(/<textarea\b([^>]*)>([\s\S]*?)<\/textarea\s*>/gi)) {
      const a = parseAttributes(t[1]);
      inputs.push({ ...a, type: 'textarea', value: decodeEntities(t[2]) });
    }
    forms.push({
      attrs,
      method: (attrs.method ?? 'get').toLowerCase(),
      action: attrs.action,
      inputs,
      buttons,
      html: m[0],
    });
  }
  return forms;
}

/** Resolve a form's action against the page URL (a missing/empty action posts to the page itself). */
export function formActionUrl(form, pageUrl) {
  return new URL(form.action && form.action.length ? form.action : pageUrl, pageUrl).href;
}

/**
 * Successful controls of a form, as a browser would submit them when the given
 * submit button is pressed: named inputs (checkboxes/radios only if checked,
 * disabled ones skipped), then the pressed button's name=value.
 */
export function formFields(form, { button, overrides = {} } = {}) {
  const fields = new URLSearchParams();
  for (const input of form.inputs) {
    if (!input.name || 'disabled' in input) continue;
    if ((input.type === 'checkbox' || input.type === 'radio') && !('checked' in input)) continue;
    if (input.type === 'file') continue;
    const v = Object.hasOwn(overrides, input.name) ? overrides[input.name] : (input.value ?? (input.type === 'checkbox' ? 'on' : ''));
    fields.append(input.name, v);
  }
  for (const [k, v] of Object.entries(overrides)) if (!fields.has(k)) fields.append(k, v);
  if (button?.name) fields.append(button.name, button.value ?? '');
  return fields;
}

export class PageError extends Error {
  constructor(message, hop) {
    const text = hop ? pageText(hop.body) : '';
    super(hop ? `${message}\n  at ${hop.method} ${hop.url} -> ${hop.status} (${hop.contentType || 'no content-type'})\n  page text: ${text}` : message);
    this.hop = hop;
  }
}

/** The consent form: a POST form with a submit button named "decision". */
export function findConsentForm(html) {
  return parseForms(html).filter((f) => f.buttons.some((b) => b.name === 'decision'));
}

/** A login form: a form with a password field. */
export function findLoginForm(html) {
  return parseForms(html).find((f) => f.inputs.some((i) => i.type === 'password'));
}
