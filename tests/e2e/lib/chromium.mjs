// Headless Chromium through playwright-core, using a system Chromium
// (Debian's `chromium` package: apt-get install chromium); playwright's own
// browser download is not used. CHROMIUM_PATH overrides the location.

import fs from 'node:fs';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];

/** Path of a Chromium binary, or undefined. */
export function findChromium() {
  if (process.env.CHROMIUM_PATH) return fs.existsSync(process.env.CHROMIUM_PATH) ? process.env.CHROMIUM_PATH : undefined;
  return CANDIDATES.find((p) => fs.existsSync(p));
}

/** Launch headless Chromium; throws when none is installed. */
export async function launchChromium(opts = {}) {
  const executablePath = findChromium();
  if (!executablePath) throw new Error('no Chromium found: apt-get install chromium, or set CHROMIUM_PATH');
  const { chromium } = await import('playwright-core');
  // --no-sandbox: the tests run as root in a VM.
  return chromium.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'], ...opts });
}
