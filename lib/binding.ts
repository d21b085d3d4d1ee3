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
    const reason = err instanceof Error ? (err.message.split('\n')[0] ?? '') : String(err);
    throw new BindingError(bindingErrorMessage(root, override, reason));
  }
}

/** Prebuilt platforms shipped in `prebuilds/` (e.g. ["linux-x64"]). */
function shippedPrebuilds(root: string): string[] {
  try {
    return fs.readdirSync(path.join(root, 'prebuilds')).filter((d) => fs.readdirSync(path.join(root, 'prebuilds', d)).some((f) => f.endsWith('.node')));
  } catch {
    return [];
  }
}

/** What was tried, why it failed, and the exact commands that build the addon for this machine. */
export function bindingErrorMessage(root: string, override: string | undefined, reason: string): string {
  const platform = `${process.platform}-${process.arch}`;
  const shipped = shippedPrebuilds(root);
  return `thinkcache: could not load the native addon for ${platform} (node ${process.versions.node}).\n` +
    (override
      ? `  Looked in: ${override} (THINKCACHE_BINDING)\n`
      : `  Looked in: ${path.join(root, 'prebuilds', platform)} (prebuilt) and ${path.join(root, 'build', 'Release')} (built here)\n`) +
    `  Reason: ${reason}\n` +
    `  Prebuilt binaries in this package: ${shipped.length ? shipped.join(', ') : 'none'}.\n` +
    `  To build it from source (needs python3, make and a C++17 compiler):\n` +
    `    cd ${root} && npx node-gyp rebuild\n` +
    `  or, from your project, run the package's install script (allow it first if your npm blocks install scripts):\n` +
    `    npm rebuild thinkcache --foreground-scripts`;
}
