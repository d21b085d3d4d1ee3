#!/usr/bin/env node
// Copies the addon built by `npm install` / `npx node-gyp build` (build/Release/thinkcache.node) to where
// prebuildify puts it and node-gyp-build looks first: prebuilds/<platform>-<arch>/thinkcache.napi[.glibc|.musl].node,
// stripped. The result is what `npm run build:prebuild` (prebuildify --napi --strip --tag-libc, a clean rebuild that
// needs the Node headers) produces, without rebuilding. `npm pack` then ships it (package.json "files").
//   node scripts/stage-prebuild.mjs [--from PATH.node] [--no-strip]
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fromAt = process.argv.indexOf('--from');
const src = fromAt > 0 && process.argv[fromAt + 1] ? process.argv[fromAt + 1] : join(root, 'build', 'Release', 'thinkcache.node');
if (!existsSync(src)) {
  console.error(`stage-prebuild: ${src} not found; build it first: npx node-gyp rebuild (or npm run build:prebuild)`);
  process.exit(1);
}
// prebuildify's --tag-libc: glibc unless the system is musl-based (Alpine)
const libc = process.platform === 'linux' ? (existsSync('/etc/alpine-release') ? '.musl' : '.glibc') : '';
const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
mkdirSync(dir, { recursive: true });
for (const f of readdirSync(dir)) if (f.endsWith('.node')) rmSync(join(dir, f));
const dest = join(dir, `thinkcache.napi${libc}.node`);
copyFileSync(src, dest);
if (!process.argv.includes('--no-strip') && process.platform === 'linux') {
  const r = spawnSync('strip', ['--strip-unneeded', dest], { stdio: 'inherit' });
  if (r.status !== 0) console.warn('stage-prebuild: strip failed or is missing; the binary is shipped unstripped');
}
console.log(`stage-prebuild: ${dest} (${(statSync(dest).size / 1024).toFixed(0)} KiB)`);
