/** /v2.0/instances: the instances the firewall filters, with their groups and Nova network info. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { owningProject, principalOf, scopeOf, type RouteContext } from '../context.js';
import {
  ErrorResponses,
  IdParams,
  InstanceCreateBody,
  InstanceEnvelope,
  InstanceList,
  InstanceQuery,
  InstanceUpdateBody,
} from '../schemas.js';
import { instanceToWire, instanceUpdateFromWire, newInstanceFromWire } from '../wire.js';

const tags = ['instances'];

export const instanceRoutes: FastifyPluginAsyncTypebox<RouteContext> = async (app, { store, ensureDefaultGroup }) => {
  app.post(
    '/instances',
    {
      schema: {
        tags,
        summary: 'Register an instance (with no security_groups it joins the project default group)',
        body: InstanceCreateBody,
        response: { 201: InstanceEnvelope, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      const projectId = owningProject(principalOf(request), request.body.instance);
      await ensureDefaultGroup(projectId);
      const row = await store.createInstance(projectId, newInstanceFromWire(request.body));
      return reply.code(201).send({ instance: instanceToWire(row) });
    },
  );

  app.get(
    '/instances',
    {
      schema: {
        tags,
        summary: 'List instances',
        querystring: InstanceQuery,
        response: { 200: InstanceList, ...ErrorResponses },
      },
    },
    async (request) => {
      const scope = scopeOf(principalOf(request));
      const { host } = request.query;
      const rows = await store.listInstances(scope, host === undefined ? {} : { host });
      return { instances: rows.map(instanceToWire) };
    },
  );

  app.get(
    '/instances/:id',
    {
      schema: { tags, summary: 'Show an instance', params: IdParams, response: { 200: InstanceEnvelope, ...ErrorResponses } },
    },
    async (request) => ({
      instance: instanceToWire(await store.getInstance(scopeOf(principalOf(request)), request.params.id)),
    }),
  );

  app.put(
    '/instances/:id',
    {
      schema: {
        tags,
        summary: "Change an instance's name, host, security groups or network info",
        params: IdParams,
        body: InstanceUpdateBody,
        response: { 200: InstanceEnvelope, ...ErrorResponses },
      },
    },
    async (request) => {
      const row = await store.updateInstance(
        scopeOf(principalOf(request)),
        request.params.id,
        instanceUpdateFromWire(request.body),
      );
      return { instance: instanceToWire(row) };
    },
  );

  app.delete(
    '/instances/:id',
    {
      schema: {
        tags,
        summary: 'Remove an instance',
        params: IdParams,
        response: { 204: { type: 'null', description: 'deleted' }, ...ErrorResponses },
      },
    },
    async (request, reply) => {
      await store.deleteInstance(scopeOf(principalOf(request)), request.params.id);
      return reply.code(204).send();
    },
  );
};
