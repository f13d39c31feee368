/**
 * The REST API: a Fastify app with Neutron's wire format, built around a
 * Store. `buildApi` returns the app ready but not listening; the service
 * calls `listen()`, tests call `inject()`.
 *
 *   /v2.0/...        token-authenticated resources (routes/*.ts)
 *   /healthz         store reachable?            (no auth)
 *   /metrics         prom-client text            (no auth)
 *   /openapi.json    the OpenAPI 3.1 document    (no auth)
 */
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import type { Store } from '../store/store.js';
import { authenticate, type TokenAuth } from './auth.js';
import { createRouteContext, principalOf } from './context.js';
import { ApiError, errorHandler, notFoundHandler } from './errors.js';
import { httpMetrics } from './metrics.js';
import { agentRoutes } from './routes/agent.js';
import { instanceRoutes } from './routes/instances.js';
import { providerRuleRoutes } from './routes/provider-rules.js';
import { securityGroupRuleRoutes } from './routes/security-group-rules.js';
import { securityGroupRoutes } from './routes/security-groups.js';
import { ErrorResponses, HealthSchema, SHARED_SCHEMAS } from './schemas.js';
import type { AgentStatus } from './wire.js';

export type { AgentStatus } from './wire.js';

export interface ApiDeps {
  store: Store;
  /** null (no token file): every request acts as the admin of project `default` */
  auth: TokenAuth | null;
  /** the service's metrics registry, served at /metrics; the API adds its HTTP metrics to it */
  registry: Registry;
  /** a pino logger, or false (the default) for none */
  logger?: FastifyBaseLogger | false;
  /** for GET /v2.0/status; without it that route answers 404 */
  agentStatus?: () => Promise<AgentStatus> | AgentStatus;
  /** for GET /v2.0/hosts/:host/ruleset; without it that route answers 404 */
  renderRuleset?: (host: string, format: 'iptables' | 'nft') => Promise<string>;
}

export const API_PREFIX = '/v2.0';

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

export async function buildApi(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    ...(deps.logger ? { loggerInstance: deps.logger } : { logger: false }),
    // Neutron's request id header; also the id in every log line of the request.
    genReqId: () => `req-${randomUUID()}`,
    requestIdHeader: false,
    ajv: {
      customOptions: {
        // Unknown fields are an error (400 naming them), not silently dropped;
        // a string is not an integer.
        removeAdditional: false,
        coerceTypes: false,
        // Every error, so that a 400 names all the unknown fields at once. Safe
        // here: every array in the schemas is bounded, and so is the body (1 MiB).
        allErrors: true,
      },
    },
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);
  app.decorateRequest('principal', null);
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-openstack-request-id', request.id);
  });
  app.addHook('onResponse', httpMetrics(deps.registry));
  for (const schema of SHARED_SCHEMAS) app.addSchema(schema);

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'virtfw',
        version,
        description: 'Security groups for virtual instances, enforced by the Linux kernel. Wire format: OpenStack Neutron v2.0.',
      },
      components: {
        securitySchemes: {
          token: { type: 'apiKey', in: 'header', name: 'X-Auth-Token' },
          bearer: { type: 'http', scheme: 'bearer' },
        },
      },
      security: [{ token: [] }, { bearer: [] }],
    },
    // Shared schemas appear under components.schemas by their $id, not as def-N.
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });

  const ctx = createRouteContext(deps.store);

  await app.register(
    async (v2) => {
      v2.addHook('onRequest', async (request) => {
        request.principal = authenticate(deps.auth, request);
      });
      // Neutron's default group on first use, for the caller's own project.
      await v2.register(async (projectScoped) => {
        projectScoped.addHook('preHandler', async (request) => ctx.ensureDefaultGroup(principalOf(request).projectId));
        await projectScoped.register(securityGroupRoutes, ctx);
        await projectScoped.register(securityGroupRuleRoutes, ctx);
        await projectScoped.register(instanceRoutes, ctx);
      });
      await v2.register(providerRuleRoutes, ctx);
      await v2.register(agentRoutes, { ...ctx, agentStatus: deps.agentStatus, renderRuleset: deps.renderRuleset });
    },
    { prefix: API_PREFIX },
  );

  const open = { security: [] as Array<Record<string, string[]>> };
  app.get(
    '/healthz',
    { schema: { tags: ['system'], summary: 'Liveness: the store answers a cheap query', ...open, response: { 200: HealthSchema, ...ErrorResponses } } },
    async (request) => {
      try {
        await deps.store.latestChangeSeq();
      } catch (err) {
        request.log.error({ err }, 'health check: the store did not answer');
        throw new ApiError(503, 'ServiceUnavailable', 'The store is not reachable');
      }
      return { status: 'ok' as const };
    },
  );
  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) =>
    reply.type(deps.registry.contentType).send(await deps.registry.metrics()),
  );
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  await app.ready();
  return app;
}
