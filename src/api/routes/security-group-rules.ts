/** /v2.0/security-group-rules: the rules of security groups. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { owningProject, principalOf, scopeOf, type RouteContext } from '../context.js';
import { badRequest } from '../errors.js';
import {
  ErrorResponses,
  IdParams,
  SecurityGroupRuleCreateBody,
  SecurityGroupRuleEnvelope,
  SecurityGroupRuleList,
  SecurityGroupRuleQuery,
} from '../schemas.js';
import { newRuleFromWire, ruleToWire } from '../wire.js';

const tags = ['security group rules'];

export const securityGroupRuleRoutes: FastifyPluginAsyncTypebox<RouteContext> = async (app, { store }) => {
  app.post(
    '/security-group-rules',
    {
      schema: {
        tags,
        summary: 'Add a rule to a security group',
        description:
          'protocol is a name or a number (text or integer); for icmp and icmpv6, port_range_min/max are the ICMP type/code.',
        body: SecurityGroupRuleCreateBody,
        response: { 201: SecurityGroupRuleEnvelope, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const scope = scopeOf(principal);
      const body = request.body.security_group_rule;
      // A rule belongs to its group's project; naming another one is an error, not a move.
      const projectId = owningProject(principal, body);
      if (body.project_id !== undefined || body.tenant_id !== undefined) {
        const group = await store.getSecurityGroup(scope, body.security_group_id);
        if (group.projectId !== projectId) {
          throw badRequest(body.project_id !== undefined ? 'project_id' : 'tenant_id', `security group ${group.id} belongs to another project`);
        }
      }
      const row = await store.createRule(scope, newRuleFromWire(request.body));
      return reply.code(201).send({ security_group_rule: ruleToWire(row) });
    },
  );

  app.get(
    '/security-group-rules',
    {
      schema: {
        tags,
        summary: 'List security group rules',
        querystring: SecurityGroupRuleQuery,
        response: { 200: SecurityGroupRuleList, ...ErrorResponses },
      },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      const { security_group_id: securityGroupId } = request.query;
      const rows = await store.listRules(scope, securityGroupId === undefined ? {} : { securityGroupId });
      return { security_group_rules: rows.map(ruleToWire) };
    },
  );

  app.get(
    '/security-group-rules/:id',
    {
      schema: { tags, summary: 'Show a security group rule', params: IdParams, response: { 200: SecurityGroupRuleEnvelope, ...ErrorResponses } },
    },
    async (request) => ({
      security_group_rule: ruleToWire(await store.getRule(scopeOf(principalOf(request)), request.params.id)),
    }),
  );

  app.delete(
    '/security-group-rules/:id',
    {
      schema: {
        tags,
        summary: 'Delete a security group rule',
        params: IdParams,
        response: { 204: { type: 'null', description: 'deleted' }, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      await store.deleteRule(scopeOf(principalOf(request)), request.params.id);
      return reply.code(204).send();
    },
  );
};
