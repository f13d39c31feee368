/**
 * Every error virtfw raises is a FirewallError with a stable `code`, so that
 * callers (the API, the CLI, an embedding compute manager) can react to the
 * kind of failure without parsing messages.
 */
export class FirewallError extends Error {
  readonly code: string;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: string, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = Object.freeze({ ...(options.details ?? {}) });
  }
}

/** A bad input at an entry point. `field` names the offending field by path. */
export class ValidationError extends FirewallError {
  readonly field: string;

  constructor(field: string, message: string) {
    super('VIRTFW_ERR_VALIDATION', `${field}: ${message}`, { details: { field } });
    this.field = field;
  }
}

/** A kernel tool (iptables-restore, nft, ...) failed; the previous ruleset is still in force. */
export class ApplyError extends FirewallError {
  constructor(
    message: string,
    details: { tool: string; exitCode: number | null; stderr: string; input?: string; failedLine?: string },
    cause?: unknown,
  ) {
    super('VIRTFW_ERR_APPLY', message, { details, cause });
  }
}

/** A caller asked about an instance the driver does not filter. */
export class NotFilteredError extends FirewallError {
  constructor(instanceId: string) {
    super('VIRTFW_ERR_NOT_FILTERED', `instance ${instanceId} is not filtered by this driver`, {
      details: { instanceId },
    });
  }
}

/** The configured driver cannot be found or constructed. */
export class DriverLoadError extends FirewallError {
  constructor(message: string, cause?: unknown) {
    super('VIRTFW_ERR_DRIVER_LOAD', message, { cause });
  }
}

/** A resource does not exist, or is not visible to the caller's project. */
export class NotFoundError extends FirewallError {
  constructor(resource: string, id: string) {
    super('VIRTFW_ERR_NOT_FOUND', `${resource} ${id} could not be found`, { details: { resource, id } });
  }
}

/** The request conflicts with the current state (a duplicate, or a resource still in use). */
export class ConflictError extends FirewallError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('VIRTFW_ERR_CONFLICT', message, { details });
  }
}
