/**
 * What every route plugin gets: the store, the request's principal and
 * scope, and Neutron's "default group on first use".
 */
import type { FastifyRequest } from 'fastify';
import { validateId } from '../model/validate.js';
import type { ProjectScope, Store } from '../store/store.js';
import type { Principal } from './auth.js';
import { badRequest, forbidden } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the /v2.0 auth hook; null on the unauthenticated routes. */
    principal: Principal | null;
  }
}

export interface RouteContext {
  store: Store;
  /**
   * Makes the project's `default` group if it has none yet (Neutron does so
   * on a project's first use of the API). Remembered per process, so only a
   * project's first request costs a store call.
   */
  ensureDefaultGroup(projectId: string): Promise<void>;
}

export function createRouteContext(store: Store): RouteContext {
  const done = new Set<string>();
  const pending = new Map<string, Promise<void>>();
  return {
    store,
    async ensureDefaultGroup(projectId) {
      if (done.has(projectId)) return;
      let p = pending.get(projectId);
      if (!p) {
        p = store.ensureDefaultSecurityGroup(projectId).then(
          () => {
            done.add(projectId);
            pending.delete(projectId);
          },
          (err: unknown) => {
            pending.delete(projectId);
            throw err;
          },
        );
        pending.set(projectId, p);
      }
      await p;
    },
  };
}

export function principalOf(request: FastifyRequest): Principal {
  // The auth hook runs on every /v2.0 route, so a missing principal is a wiring bug.
  if (request.principal === null) throw new Error('no principal on an authenticated route');
  return request.principal;
}

/** The store scope of a principal: null (every project) for an admin. */
export function scopeOf(principal: Principal): ProjectScope {
  return principal.admin ? null : principal.projectId;
}

export function requireAdmin(principal: Principal, action: string): void {
  if (!principal.admin) throw forbidden(action);
}

/** A preValidation hook for admin-only routes: a non-admin gets 403 before its input is looked at. */
export function adminOnly(action: string) {
  return async (request: FastifyRequest): Promise<void> => requireAdmin(principalOf(request), action);
}

/**
 * The project a create request puts its resource in: the caller's, or the
 * `project_id`/`tenant_id` of the body. Only an admin may name another
 * project (Neutron answers 400 to anyone else, and so do we).
 */
export function owningProject(principal: Principal, body: { project_id?: string; tenant_id?: string }): string {
  const { project_id: projectId, tenant_id: tenantId } = body;
  if (projectId !== undefined && tenantId !== undefined && projectId !== tenantId) {
    throw badRequest('tenant_id', 'project_id and tenant_id differ');
  }
  const named = projectId ?? tenantId;
  if (named === undefined || named === principal.projectId) return principal.projectId;
  if (!principal.admin) {
    throw badRequest(
      projectId !== undefined ? 'project_id' : 'tenant_id',
      "specifying a project other than the authenticated one requires admin privileges",
    );
  }
  return validateId(projectId !== undefined ? 'project_id' : 'tenant_id', named);
}
