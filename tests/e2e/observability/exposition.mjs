// The Prometheus text exposition format, read well enough to count series
// and list label values (promtool checks the format itself).

/** Unescape a label value (\\, \", \n). */
function unescapeLabel(s) {
  return s.replace(/\\(["\\n])/g, (_, c) => (c === 'n' ? '\n' : c));
}

/**
 * Parse exposition text into samples: [{ name, labels: {..}, value }], plus
 * the families declared by # TYPE lines: Map(name -> type).
 */
export function parseExposition(text) {
  const samples = [];
  const types = new Map();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    if (line.startsWith('#')) {
      const m = line.match(/^#\s+TYPE\s+(\S+)\s+(\S+)/);
      if (m) types.set(m[1], m[2]);
      continue;
    }
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$/);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/g;
      let lm;
      let consumed = 0;
      while ((lm = re.exec(m[3])) !== null) {
        labels[lm[1]] = unescapeLabel(lm[2]);
        consumed = re.lastIndex;
      }
      if (consumed !== m[3].length) throw new Error(`unparsable labels in: ${line}`);
    }
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return { samples, types };
}

/** The family a sample belongs to (histogram/summary parts folded into their family). */
export function familyOf(name, types) {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      if (['histogram', 'summary'].includes(types.get(base))) return base;
    }
  }
  return name;
}

/**
 * Distinct label sets per family, ignoring the histogram `le` (and summary
 * `quantile`) label, for names matching `prefix`: Map(family -> Set(labelset key)).
 * This is what grows when a label takes a new value.
 */
export function labelSets(text, prefix = '') {
  const { samples, types } = parseExposition(text);
  const out = new Map();
  for (const s of samples) {
    if (!s.name.startsWith(prefix)) continue;
    const family = familyOf(s.name, types);
    const { le: _le, quantile: _q, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1)));
    if (!out.has(family)) out.set(family, new Set());
    out.get(family).add(key);
  }
  return out;
}

/** Raw series (every sample line) whose name starts with `prefix`. */
export function seriesCount(text, prefix = '') {
  return parseExposition(text).samples.filter((s) => s.name.startsWith(prefix)).length;
}

/** Every label value of samples whose name starts with `prefix`: [{ name, label, value }]. */
export function labelValues(text, prefix = '') {
  const out = [];
  for (const s of parseExposition(text).samples) {
    if (!s.name.startsWith(prefix)) continue;
    for (const [label, value] of Object.entries(s.labels)) out.push({ name: s.name, label, value });
  }
  return out;
}

/** What is in `after` and not in `before`, as readable lines "family{labels}". */
export function newLabelSets(before, after) {
  const lines = [];
  for (const [family, sets] of after) {
    const old = before.get(family) ?? new Set();
    for (const key of sets) {
      if (!old.has(key)) {
        const labels = JSON.parse(key)
          .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
          .join(',');
        lines.push(`${family}{${labels}}`);
      }
    }
  }
  return lines;
}

export function countLabelSets(sets) {
  let n = 0;
  for (const s of sets.values()) n += s.size;
  return n;
}
