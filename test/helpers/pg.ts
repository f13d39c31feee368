/**
 * PostgreSQL for the store tests: the `test` database of the local server
 * (override with VIRTFW_TEST_PG_URL), one unique schema per test file (or per
 * fresh store), dropped afterwards. A connection failure fails the tests: it
 * is never a reason to skip them.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const PG_TEST_URL = process.env.VIRTFW_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Schema names made by the tests start with this, so leftovers are easy to find. */
export const TEST_SCHEMA_PREFIX = 'vfwtest_';

export function uniqueSchema(tag = 's'): string {
  return `${TEST_SCHEMA_PREFIX}${tag}_${process.pid}_${randomBytes(4).toString('hex')}`;
}

export async function pgQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(
  text: string,
  values: unknown[] = [],
): Promise<pg.QueryResult<R>> {
  const client = new pg.Client({ connectionString: PG_TEST_URL });
  await client.connect();
  try {
    return await client.query<R>(text, values);
  } finally {
    await client.end();
  }
}

export async function dropSchemas(schemas: Iterable<string>): Promise<void> {
  for (const schema of schemas) {
    await pgQuery(`DROP SCHEMA IF EXISTS "${schema.replace(/"/g, '""')}" CASCADE`);
  }
}

export async function schemaExists(schema: string): Promise<boolean> {
  const result = await pgQuery('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
  return result.rowCount === 1;
}
