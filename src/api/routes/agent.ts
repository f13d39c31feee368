/** /v2.0/status and /v2.0/hosts/{host}/ruleset: what the agent of this process did, and would do. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { adminOnly, principalOf, scopeOf, type RouteContext } from '../context.js';
import { notAvailable } from '../errors.js';
import { AgentStatusEnvelope, ErrorResponses, HostParams, RulesetQuery, RulesetText } from '../schemas.js';
import { statusToWire, type AgentStatus } from '../wire.js';

export interface AgentRouteOptions extends RouteContext {
  agentStatus?: () => Promise<AgentStatus> | AgentStatus;
  renderRuleset?: (host: string, format: 'iptables' | 'nft') => Promise<string>;
}

export const agentRoutes: FastifyPluginAsyncTypebox<AgentRouteOptions> = async (app, { store, agentStatus, renderRuleset }) => {
  app.get(
    '/status',
    {
      schema: {
        tags: ['agent'],
        summary: "The agent's last apply on this host; a non-admin sees only its own project's instances",
        response: { 200: AgentStatusEnvelope, ...ErrorResponses },
      },
    },
    async (request) => {
      if (!agentStatus) throw notAvailable('AgentNotFound', 'No agent runs in this process');
      const scope = scopeOf(principalOf(request));
      const status = await agentStatus();
      if (scope === null) return { status: statusToWire(status) };
      const visible = new Set((await store.listInstances(scope)).map((i) => i.id));
      return { status: statusToWire({ ...status, instances: status.instances.filter((i) => visible.has(i.instanceId)) }) };
    },
  );

  app.get(
    '/hosts/:host/ruleset',
    {
      preValidation: adminOnly('Reading a host ruleset'),
      schema: {
        tags: ['agent'],
        summary: 'The ruleset a host would apply now (admin only)',
        params: HostParams,
        querystring: RulesetQuery,
        response: {
          200: { description: 'the ruleset, as iptables-restore or nft -f input', content: { 'text/plain': { schema: RulesetText } } },
          ...ErrorResponses,
        },
      },
    },
    async (request, reply) => {
      if (!renderRuleset) throw notAvailable('RulesetNotAvailable', 'This process cannot render rulesets');
      const text = await renderRuleset(request.params.host, request.query.format ?? 'iptables');
      return reply.type('text/plain; charset=utf-8').send(text);
    },
  );
};
