/**
 * The logging surface virtfw needs: pino's `(fields, message)` call shape, so
 * a pino logger (the service's) can be passed straight in, and a library user
 * can pass anything with these four methods.
 */
export interface Logger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

const noop = (): void => undefined;

export const silentLogger: Logger = Object.freeze({ debug: noop, info: noop, warn: noop, error: noop });
