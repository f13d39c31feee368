/** /v2.0/status and /v2.0/hosts/{host}/ruleset: what the agent of this process did, and would do. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { adminOnly, principalOf, scopeOf, type RouteContext } from '../context.js';
import { notAvailable } from '../errors.js';
import { AgentStatusEnvelope, AgentStatusList, ErrorResponses, HostParams, RulesetQuery, RulesetText, StatusQuery } from '../schemas.js';
import { statusToWire, type AgentStatus } from '../wire.js';

export interface AgentRouteOptions extends RouteContext {
  agentStatus?: () => Promise<AgentStatus> | AgentStatus;
  renderRuleset?: (host: string, format: 'iptables' | 'nft') => Promise<string>;
}

export const agentRoutes: FastifyPluginAsyncTypebox<AgentRouteOptions> = async (app, { store, agentStatus, renderRuleset }) => {
  /** Only the caller's own instances, unless it is admin. */
  const visibleTo = async (scope: string | null, status: AgentStatus): Promise<AgentStatus> => {
    if (scope === null) return status;
    const visible = new Set((await store.listInstances(scope)).map((i) => i.id));
    return { ...status, instances: status.instances.filter((i) => visible.has(i.instanceId)) };
  };

  app.get(
    '/status',
    {
      schema: {
        tags: ['agent'],
        summary:
          "An agent's last apply: this process's agent, or the one of `?host=` as it last reported it; a non-admin sees only its own project's instances",
        querystring: StatusQuery,
        response: { 200: AgentStatusEnvelope, ...ErrorResponses },
      },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      const host = request.query.host;
      const local = agentStatus ? await agentStatus() : null;
      let status: AgentStatus | null = local && (host === undefined || local.host === host) ? local : null;
      if (!status && host !== undefined) status = await store.getAgentStatus(host);
      if (!status) {
        throw host === undefined
          ? notAvailable('AgentNotFound', 'No agent runs in this process; ask for one with ?host=')
          : notAvailable('AgentNotFound', `No agent of host ${host} has reported`);
      }
      return { status: statusToWire(await visibleTo(scope, status)) };
    },
  );

  app.get(
    '/agents',
    {
      schema: {
        tags: ['agent'],
        summary: 'What every host\'s agent last reported',
        response: { 200: AgentStatusList, ...ErrorResponses },
      },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      const rows = await store.listAgentStatus();
      return { agents: await Promise.all(rows.map(async (r) => statusToWire(await visibleTo(scope, r)))) };
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
