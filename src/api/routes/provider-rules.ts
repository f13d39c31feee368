/** /v2.0/provider-firewall-rules: admin drop rules that apply to every instance of every host. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { adminOnly, type RouteContext } from '../context.js';
import {
  ErrorResponses,
  IdParams,
  NoQuery,
  ProviderFirewallRuleCreateBody,
  ProviderFirewallRuleEnvelope,
  ProviderFirewallRuleList,
} from '../schemas.js';
import { newProviderRuleFromWire, providerRuleToWire } from '../wire.js';

const tags = ['provider firewall rules'];

export const providerRuleRoutes: FastifyPluginAsyncTypebox<RouteContext> = async (app, { store }) => {
  // Every route here is admin only; the check runs after authentication (onRequest).
  app.addHook('preValidation', adminOnly('Managing provider firewall rules'));

  app.post(
    '/provider-firewall-rules',
    {
      schema: {
        tags,
        summary: 'Add a provider rule: drop ingress from a CIDR (optionally one protocol/port range) on every host',
        body: ProviderFirewallRuleCreateBody,
        response: { 201: ProviderFirewallRuleEnvelope, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      const row = await store.createProviderRule(newProviderRuleFromWire(request.body));
      return reply.code(201).send({ provider_firewall_rule: providerRuleToWire(row) });
    },
  );

  app.get(
    '/provider-firewall-rules',
    { schema: { tags, summary: 'List provider rules', querystring: NoQuery, response: { 200: ProviderFirewallRuleList, ...ErrorResponses } } },
    async () => ({ provider_firewall_rules: (await store.listProviderRules()).map(providerRuleToWire) }),
  );

  app.delete(
    '/provider-firewall-rules/:id',
    {
      schema: {
        tags,
        summary: 'Delete a provider rule',
        params: IdParams,
        response: { 204: { type: 'null', description: 'deleted' }, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      await store.deleteProviderRule(request.params.id);
      return reply.code(204).send();
    },
  );
};
