import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real-kernel tests spawn many short-lived tools; give them room.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Each kernel test file builds its own namespaces with a unique prefix,
    // so files may run side by side; two workers match the CI machine.
    maxWorkers: 2,
  },
});
