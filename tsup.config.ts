import { defineConfig } from 'tsup';

// ESM + CommonJS builds with bundled types. `shims` lets lib/binding.ts use import.meta.url in both.
export default defineConfig({
  entry: { index: 'lib/index.ts', cli: 'lib/cli.ts' },
  format: ['esm', 'cjs'],
  dts: { entry: { index: 'lib/index.ts' } },
  shims: true,
  clean: true,
  target: 'node20',
  splitting: false,
  sourcemap: true,
});
