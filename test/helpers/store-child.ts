/**
 * A second process for the store's race tests: opens the store named on the
 * command line and runs the writes it is given, as fast as it can, all at
 * once. Prints one JSON line: how each write ended.
 *
 *   node --import tsx test/helpers/store-child.ts '<json ChildTask>'
 */
import { openStore, type OpenStoreOptions } from '../../src/store/open.js';
import type { NewRule } from '../../src/store/store.js';

export interface ChildTask {
  url: string;
  options: OpenStoreOptions;
  project: string;
  /** migrate first (as a service starting up would) */
  migrate?: boolean;
  instanceId?: string;
  /** one updateInstance per entry */
  groupUpdates?: string[][];
  /** how many times to create `rule` */
  ruleCreates?: number;
  rule?: NewRule;
}

export interface ChildResult {
  ok: number;
  conflicts: number;
  errors: string[];
}

async function main(): Promise<void> {
  const task = JSON.parse(process.argv[2] ?? '{}') as ChildTask;
  const store = openStore(task.url, task.options);
  const result: ChildResult = { ok: 0, conflicts: 0, errors: [] };
  try {
    if (task.migrate) await store.migrate();
    const writes: Promise<unknown>[] = [];
    for (const groups of task.groupUpdates ?? []) {
      writes.push(store.updateInstance(task.project, task.instanceId as string, { securityGroups: groups }));
    }
    for (let i = 0; i < (task.ruleCreates ?? 0); i++) writes.push(store.createRule(task.project, task.rule as NewRule));
    for (const outcome of await Promise.allSettled(writes)) {
      if (outcome.status === 'fulfilled') result.ok += 1;
      else if ((outcome.reason as { code?: string }).code === 'VIRTFW_ERR_CONFLICT') result.conflicts += 1;
      else result.errors.push(String(outcome.reason));
    }
  } finally {
    await store.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
