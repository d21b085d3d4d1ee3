import { defineConfig } from 'vitest/config';

// Native memory is large and the machine has 2 cores: run test files one at a time in forked processes.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 1,
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 300_000,
  },
});
