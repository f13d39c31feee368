/** /v2.0/security-groups: Neutron's security groups, each with its rules. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { owningProject, principalOf, scopeOf, type RouteContext } from '../context.js';
import {
  ErrorResponses,
  IdParams,
  NoQuery,
  SecurityGroupCreateBody,
  SecurityGroupEnvelope,
  SecurityGroupList,
  SecurityGroupUpdateBody,
} from '../schemas.js';
import { groupToWire, groupsToWire, newSecurityGroupFromWire, securityGroupUpdateFromWire } from '../wire.js';

const tags = ['security groups'];

export const securityGroupRoutes: FastifyPluginAsyncTypebox<RouteContext> = async (app, { store, ensureDefaultGroup }) => {
  /** The group as the wire shows it, with its rules. */
  const withRules = async (scope: string | null, row: Parameters<typeof groupToWire>[0]) =>
    groupToWire(row, await store.listRules(scope, { securityGroupId: row.id }));

  app.post(
    '/security-groups',
    {
      schema: {
        tags,
        summary: 'Create a security group (it starts with egress-any rules for IPv4 and IPv6)',
        body: SecurityGroupCreateBody,
        response: { 201: SecurityGroupEnvelope, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const projectId = owningProject(principal, request.body.security_group);
      await ensureDefaultGroup(projectId);
      const row = await store.createSecurityGroup(projectId, newSecurityGroupFromWire(request.body));
      return reply.code(201).send({ security_group: await withRules(scopeOf(principal), row) });
    },
  );

  app.get(
    '/security-groups',
    {
      schema: { tags, summary: 'List security groups', querystring: NoQuery, response: { 200: SecurityGroupList, ...ErrorResponses } },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      const [groups, rules] = await Promise.all([store.listSecurityGroups(scope), store.listRules(scope)]);
      return { security_groups: groupsToWire(groups, rules) };
    },
  );

  app.get(
    '/security-groups/:id',
    {
      schema: { tags, summary: 'Show a security group', params: IdParams, response: { 200: SecurityGroupEnvelope, ...ErrorResponses } },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      return { security_group: await withRules(scope, await store.getSecurityGroup(scope, request.params.id)) };
    },
  );

  app.put(
    '/security-groups/:id',
    {
      schema: {
        tags,
        summary: 'Rename or describe a security group (not the default group)',
        params: IdParams,
        body: SecurityGroupUpdateBody,
        response: { 200: SecurityGroupEnvelope, ...ErrorResponses },
      },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      const row = await store.updateSecurityGroup(scope, request.params.id, securityGroupUpdateFromWire(request.body));
      return { security_group: await withRules(scope, row) };
    },
  );

  app.delete(
    '/security-groups/:id',
    {
      schema: {
        tags,
        summary: 'Delete a security group no instance uses and no other group references',
        params: IdParams,
        response: { 204: { type: 'null', description: 'deleted' }, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      await store.deleteSecurityGroup(scopeOf(principalOf(request)), request.params.id);
      return reply.code(204).send();
    },
  );
};
