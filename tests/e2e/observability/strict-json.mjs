// JSON.parse accepts an object with the same key twice (the last one wins);
// log pipelines differ (reject the line, keep the first, keep both). This
// finds such keys so a log line that loses a field is caught.

/** Keys that occur more than once in one object of `text`, as "path.key" strings (text must be valid JSON). */
export function duplicateKeys(text) {
  let i = 0;
  const dups = [];
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const str = () => {
    // text[i] === '"'
    let out = '';
    i++;
    while (text[i] !== '"') {
      if (text[i] === '\\') {
        const c = text[i + 1];
        if (c === 'u') {
          out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
          i += 6;
        } else {
          out += { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }[c] ?? c;
          i += 2;
        }
      } else out += text[i++];
    }
    i++;
    return out;
  };
  const value = (path) => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const seen = new Set();
      ws();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        const key = str();
        if (seen.has(key)) dups.push(path ? `${path}.${key}` : key);
        seen.add(key);
        ws();
        i++; // :
        value(path ? `${path}.${key}` : key);
        ws();
        if (text[i++] === '}') return;
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (let n = 0; ; n++) {
        value(`${path}[${n}]`);
        ws();
        if (text[i++] === ']') return;
      }
    }
    if (c === '"') {
      str();
      return;
    }
    while (i < text.length && !',}] \t\n\r'.includes(text[i])) i++; // number, true, false, null
  };
  value('');
  return dups;
}
