/**
 * Loads the native addon lazily, on first use: from `prebuilds/<platform>-<arch>/` (shipped in the npm
 * package) or `build/Release/` (built locally), through node-gyp-build. When nothing loads, the error
 * lists what was tried and how to build it.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Addon } from './addon-types.js';
import { BindingError } from './errors.js';

let cached: Addon | undefined;

/** Directory of the installed package (the one holding package.json). */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'thinkcache') return dir;
      } catch { /* keep walking */ }
    }
    dir = path.dirname(dir);
  }
  throw new BindingError('thinkcache: cannot find the package root (package.json named "thinkcache")');
}

/** Returns the addon, loading it on the first call. */
export function getAddon(): Addon {
  if (cached) return cached;
  const root = packageRoot();
  const require = createRequire(import.meta.url);
  const override = process.env.THINKCACHE_BINDING;
  try {
    if (override) {
      cached = require(override) as Addon;
    } else {
      const load = require('node-gyp-build') as (dir: string) => unknown;
      cached = load(root) as Addon;
    }
    return cached;
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new BindingError(
      `thinkcache: could not load the native addon for ${process.platform}-${process.arch} (node ${process.versions.node}).\n` +
        `  Looked in: ${override ?? `${path.join(root, 'prebuilds', `${process.platform}-${process.arch}`)} and ${path.join(root, 'build', 'Release')}`}\n` +
        `  Reason: ${reason}\n` +
        `  To build it from source (needs python3, make and a C++17 compiler):\n` +
        `    cd ${root} && npx node-gyp rebuild\n` +
        `  or with CMake:  cd ${root} && npx cmake-js compile`,
    );
  }
}
