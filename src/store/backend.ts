/**
 * What the dialect-neutral store needs from a dialect: a write transaction
 * with the right locking, the change log's ordering lock and announcement,
 * migrations, commit notifications, and a classification of driver errors.
 */
import type { Kysely, Transaction } from 'kysely';
import type { Dialect } from './migrations.js';
import type { Database } from './schema.js';

/** A driver error, by what the store does about it. */
export type ErrorClass =
  /** a unique index refused a row; `target` says which */
  | { kind: 'unique'; target: 'default-group' | 'rule' | 'instance' | 'other' }
  /** a foreign key refused a row (a referenced row went away, or is still referenced) */
  | { kind: 'foreign-key' }
  /** a lock timeout, deadlock or serialization failure: run the transaction again */
  | { kind: 'transient' };

/** Delivers a committed seq to the store's listeners; `force` skips de-duplication. */
export type Deliver = (seq: number, force?: boolean) => void;

export interface StoreBackend {
  readonly dialect: Dialect;
  readonly db: Kysely<Database>;
  /** Runs `fn` in a write transaction: serialized with every other writer of the database. */
  writeTransaction<T>(fn: (trx: Transaction<Database>) => Promise<T>): Promise<T>;
  /** In the transaction, right before the change rows are inserted (numbering in commit order). */
  beforeChanges(trx: Transaction<Database>): Promise<void>;
  /** In the transaction, after the change rows are inserted; `seq` is the last one. */
  afterChanges(trx: Transaction<Database>, seq: number): Promise<void>;
  /** After a commit of this store that logged changes up to `seq`. */
  committed(seq: number): void;
  /** Sets where commits are delivered; called once by the store. */
  attach(deliver: Deliver): void;
  /** Starts receiving other writers' commits (PostgreSQL LISTEN); idempotent. */
  startListening(): void;
  migrate(): Promise<void>;
  classifyError(error: unknown): ErrorClass | null;
  close(): Promise<void>;
}
