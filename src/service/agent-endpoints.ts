/**
 * What `virtfw agent --listen` serves: Prometheus metrics, health (the data
 * store answers and the last apply did not fail) and the agent's status.
 * No token: nothing here changes anything, and the listen address follows the
 * same loopback rule as the API's.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger as PinoLogger } from 'pino';
import type { Registry } from 'prom-client';
import type { HostAgent } from '../agent/agent.js';
import type { Store } from '../store/store.js';

export interface AgentEndpointDeps {
  registry: Registry;
  store: Store;
  agent: HostAgent;
  logger: PinoLogger;
}

export async function buildAgentEndpoints({ registry, store, agent, logger }: AgentEndpointDeps): Promise<FastifyInstance> {
  // Request logs would be noise here (a scraper every few seconds): warnings and up only.
  const app: FastifyInstance = Fastify({ loggerInstance: logger.child({ component: 'agent-endpoints' }, { level: 'warn' }) as FastifyBaseLogger });
  app.get('/metrics', async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()));
  app.get('/healthz', async (_request, reply) => {
    const status = agent.status();
    try {
      await store.latestChangeSeq();
    } catch (err) {
      return reply.code(503).send({ status: 'unavailable', reason: `data store: ${(err as Error).message}` });
    }
    if (status.lastError) return reply.code(503).send({ status: 'failing', reason: status.lastError });
    return { status: 'ok' };
  });
  app.get('/status', async () => ({ status: agent.status() }));
  await app.ready();
  return app;
}
