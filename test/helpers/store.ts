/**
 * One harness for the store tests of both dialects: `open()` gives another
 * migrated store on the file's database (its own connection or pool), and
 * `fresh()` one on a new, empty database. `cleanup()` closes them all and
 * removes the databases (temp files; PostgreSQL schemas).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type OpenStoreOptions } from '../../src/store/open.js';
import type { Store } from '../../src/store/store.js';
import { PG_TEST_URL, dropSchemas, uniqueSchema } from './pg.js';

export type Dialect = 'sqlite' | 'postgres';
export const DIALECTS: readonly Dialect[] = ['sqlite', 'postgres'];

export interface StoreTarget {
  url: string;
  options: OpenStoreOptions;
}

export interface StoreHarness {
  readonly dialect: Dialect;
  /** The URL and options of the main database, for child processes. */
  readonly url: string;
  readonly options: OpenStoreOptions;
  /** Another store on the main database, migrated. */
  open(): Promise<Store>;
  /** A store on a new, empty database, migrated unless told not to. */
  fresh(migrate?: boolean): Promise<Store>;
  /** A new, empty database, for several stores: open them with openAt. */
  freshTarget(): StoreTarget;
  /** A store on `target`, migrated unless told not to. */
  openAt(target: StoreTarget, migrate?: boolean): Promise<Store>;
  cleanup(): Promise<void>;
}

export function storeHarness(dialect: Dialect, tag: string): StoreHarness {
  const stores: Store[] = [];
  const schemas: string[] = [];
  let dir: string | null = null;
  let freshCount = 0;

  const track = async (store: Store, migrate = true): Promise<Store> => {
    stores.push(store);
    if (migrate) await store.migrate();
    return store;
  };

  if (dialect === 'sqlite') {
    dir = mkdtempSync(join(tmpdir(), `virtfw-store-${tag}-`));
    const url = `sqlite:${join(dir, 'main.db')}`;
    return {
      dialect,
      url,
      options: {},
      open: () => track(openStore(url)),
      fresh: (migrate) => track(openStore(join(dir as string, `fresh-${freshCount++}.db`)), migrate),
      freshTarget: () => ({ url: `sqlite:${join(dir as string, `fresh-${freshCount++}.db`)}`, options: {} }),
      openAt: (target, migrate) => track(openStore(target.url, target.options), migrate),
      cleanup: async () => {
        await Promise.all(stores.map((s) => s.close()));
        if (dir) rmSync(dir, { recursive: true, force: true });
      },
    };
  }

  const schema = uniqueSchema(tag);
  schemas.push(schema);
  return {
    dialect,
    url: PG_TEST_URL,
    options: { schema },
    open: () => track(openStore(PG_TEST_URL, { schema })),
    fresh: (migrate) => {
      const other = uniqueSchema(`${tag}f`);
      schemas.push(other);
      return track(openStore(PG_TEST_URL, { schema: other }), migrate);
    },
    freshTarget: () => {
      const other = uniqueSchema(`${tag}f`);
      schemas.push(other);
      return { url: PG_TEST_URL, options: { schema: other } };
    },
    openAt: (target, migrate) => track(openStore(target.url, target.options), migrate),
    cleanup: async () => {
      await Promise.all(stores.map((s) => s.close()));
      await dropSchemas(schemas);
    },
  };
}
