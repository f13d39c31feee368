/**
 * The one place that turns an error into an HTTP status and a Neutron error
 * body: `{"NeutronError": {"type", "message", "detail"}}`.
 *
 *   ApiError (raised by the API itself: 401, 403, 404 of a route) → as raised
 *   ValidationError (model/store)       → 400 InvalidInput, field renamed to its wire name
 *   schema failure (Fastify/Ajv)        → 400 HTTPBadRequest, naming the field
 *   NotFoundError                       → 404 <Resource>NotFound
 *   ConflictError                       → 409 SecurityGroupInUse, SecurityGroupRuleExists, ...
 *   other 4xx from Fastify (bad JSON, unsupported media type, body too large) → that status
 *   anything else                       → 500, logged, with a generic message (no stack, no internals)
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ConflictError, NotFoundError, ValidationError } from '../errors.js';
import { PATTERN_HINTS, type NeutronErrorBody } from './schemas.js';
import { wireField, wireText } from './wire.js';

/** An error the API raises itself, already in Neutron's terms. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export const unauthorized = (): ApiError =>
  new ApiError(401, 'HTTPUnauthorized', 'Authentication required: send a valid token in X-Auth-Token or Authorization: Bearer');
export const forbidden = (action: string): ApiError =>
  new ApiError(403, 'PolicyNotAuthorized', `${action} requires admin privileges`);
export const notAvailable = (type: string, message: string): ApiError => new ApiError(404, type, message);
export const badRequest = (field: string, reason: string): ApiError =>
  new ApiError(400, 'HTTPBadRequest', `Invalid input for ${field}. Reason: ${reason}.`);

/** Neutron's name for each HTTP status we send without a more specific type. */
const STATUS_TYPES: Readonly<Record<number, string>> = Object.freeze({
  400: 'HTTPBadRequest',
  401: 'HTTPUnauthorized',
  403: 'HTTPForbidden',
  404: 'HTTPNotFound',
  405: 'HTTPMethodNotAllowed',
  406: 'HTTPNotAcceptable',
  409: 'HTTPConflict',
  413: 'HTTPRequestEntityTooLarge',
  415: 'HTTPUnsupportedMediaType',
  429: 'HTTPTooManyRequests',
  500: 'HTTPInternalServerError',
  503: 'HTTPServiceUnavailable',
});

const INTERNAL_MESSAGE = 'Request Failed: internal server error while processing your request.';

// ------------------------------------------------------------------ 404 / 409

/** NotFoundError's `resource` (any spelling: "security group", "securityGroup", "rule") → Neutron's type. */
const NOT_FOUND_TYPES: Readonly<Record<string, string>> = Object.freeze({
  securitygroup: 'SecurityGroupNotFound',
  group: 'SecurityGroupNotFound',
  remotegroup: 'SecurityGroupNotFound',
  securitygrouprule: 'SecurityGroupRuleNotFound',
  rule: 'SecurityGroupRuleNotFound',
  instance: 'InstanceNotFound',
  providerrule: 'ProviderFirewallRuleNotFound',
  providerfirewallrule: 'ProviderFirewallRuleNotFound',
});

function pascal(text: string): string {
  return text
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0]!.toUpperCase() + w.slice(1))
    .join('');
}

function notFoundType(error: NotFoundError): string {
  const resource = typeof error.details.resource === 'string' ? error.details.resource : '';
  const key = resource.toLowerCase().replace(/[^a-z0-9]/g, '');
  return NOT_FOUND_TYPES[key] ?? (key ? `${pascal(resource)}NotFound` : 'HTTPNotFound');
}

/** A ConflictError's Neutron type, as the store names it. */
function conflictType(error: ConflictError): string {
  const given = error.details.type;
  return typeof given === 'string' && /^[A-Z][A-Za-z0-9]+$/.test(given) ? given : 'HTTPConflict';
}

// ---------------------------------------------------------- schema failures

/** The subset of an Ajv error that Fastify passes on in `error.validation`. */
interface SchemaIssue {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
}

function pathSegments(instancePath: string): string[] {
  return instancePath
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function joinPath(segments: readonly string[]): string {
  return segments.reduce((out, s) => (/^[0-9]+$/.test(s) ? `${out}[${s}]` : out ? `${out}.${s}` : s), '');
}

const ARTICLE: Readonly<Record<string, string>> = { integer: 'an integer', object: 'an object', array: 'an array', null: 'null' };

function typeList(types: readonly string[]): string {
  const words = [...new Set(types)].map((t) => ARTICLE[t] ?? `a ${t}`);
  return words.length <= 1 ? (words[0] ?? 'valid') : `${words.slice(0, -1).join(', ')} or ${words.at(-1)}`;
}

function typesOf(issue: SchemaIssue): string[] {
  const t = issue.params.type;
  return Array.isArray(t) ? t.map(String) : typeof t === 'string' ? t.split(',') : [];
}

/**
 * The client's field name and the reason, from Ajv's errors. Bodies are
 * Neutron envelopes, so the envelope key is dropped from the path:
 * `/security_group_rule/port_range_min` → `port_range_min`,
 * `/instance/network_info/0/devname` → `network_info[0].devname`.
 */
export function describeSchemaFailure(context: string | undefined, issues: readonly SchemaIssue[]): string {
  const segmentsOf = (issue: SchemaIssue): string[] => {
    const segments = pathSegments(issue.instancePath);
    return context === 'body' ? segments.slice(1) : segments;
  };
  // Unknown fields first, all of them (Neutron's wording).
  const unknown = issues
    .filter((i) => i.keyword === 'additionalProperties')
    .map((i) => joinPath([...segmentsOf(i), String(i.params.additionalProperty)]));
  if (unknown.length > 0) return `Unrecognized attribute(s) '${[...new Set(unknown)].join(', ')}'`;

  const first = issues[0];
  if (!first) return 'Failed to parse request.';
  let issue = first;
  let reason: string | undefined;
  // At a union (anyOf), Ajv reports each branch, then the union itself: prefer a
  // branch error that is not about the type ("must be <= 65535"), else list the
  // types that would do ("must be a string, an integer or null").
  const here = issues.filter((i) => i.instancePath === first.instancePath);
  const union = here.find((i) => i.keyword === 'anyOf');
  if (union) {
    const specific = here.find((i) => i.keyword !== 'type' && i.keyword !== 'anyOf');
    if (specific) issue = specific;
    else {
      issue = union;
      reason = `must be ${typeList(here.flatMap(typesOf))}`;
    }
  }
  const segments = segmentsOf(issue);
  switch (issue.keyword) {
    case 'required': {
      const missing = String(issue.params.missingProperty);
      // A missing envelope is named by its own key.
      const name = context === 'body' && issue.instancePath === '' ? missing : joinPath([...segments, missing]);
      return `Failed to parse request. Required attribute '${name}' not specified`;
    }
    case 'type':
      reason ??= `must be ${typeList(typesOf(issue))}`;
      break;
    case 'enum':
      reason ??= `must be one of: ${(issue.params.allowedValues as unknown[]).map(String).join(', ')}`;
      break;
    case 'pattern':
      reason ??= PATTERN_HINTS[String(issue.params.pattern)] ?? 'has an invalid format';
      break;
    default:
      reason ??= issue.message ?? 'is invalid';
  }
  const field = joinPath(segments) || (context === 'body' ? 'request body' : (context ?? 'request'));
  return `Invalid input for ${field}. Reason: ${reason}.`;
}

// ------------------------------------------------------------------- mapping

export interface MappedError {
  statusCode: number;
  body: NeutronErrorBody;
  /** true for a 5xx: the caller logs the original error */
  internal: boolean;
}

function neutron(statusCode: number, type: string, message: string): MappedError {
  return { statusCode, body: { NeutronError: { type, message, detail: '' } }, internal: statusCode >= 500 };
}

function isFastifyError(error: unknown): error is FastifyError {
  return error instanceof Error && typeof (error as Partial<FastifyError>).statusCode === 'number';
}

export function mapError(error: unknown): MappedError {
  if (error instanceof ApiError) return neutron(error.statusCode, error.type, error.message);
  if (error instanceof ValidationError) {
    const field = wireField(error.field);
    const prefix = `${error.field}: `;
    const reason = error.message.startsWith(prefix) ? error.message.slice(prefix.length) : error.message;
    return neutron(400, 'InvalidInput', `Invalid input for ${field}. Reason: ${wireText(reason)}.`);
  }
  if (error instanceof NotFoundError) return neutron(404, notFoundType(error), error.message);
  if (error instanceof ConflictError) return neutron(409, conflictType(error), wireText(error.message));
  if (isFastifyError(error)) {
    if (error.validation) {
      return neutron(400, 'HTTPBadRequest', describeSchemaFailure(error.validationContext, error.validation as SchemaIssue[]));
    }
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) return neutron(status, STATUS_TYPES[status] ?? 'HTTPClientError', error.message);
  }
  return neutron(500, STATUS_TYPES[500]!, INTERNAL_MESSAGE);
}

export function errorHandler(error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const mapped = mapError(error);
  if (mapped.internal) request.log.error({ err: error }, 'request failed');
  else request.log.info({ status: mapped.statusCode, type: mapped.body.NeutronError.type }, mapped.body.NeutronError.message);
  if (mapped.statusCode === 401) reply.header('www-authenticate', 'Bearer');
  return reply.code(mapped.statusCode).type('application/json; charset=utf-8').send(mapped.body);
}

export function notFoundHandler(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return errorHandler(
    new ApiError(404, 'HTTPNotFound', `The resource could not be found: ${request.method} ${request.url.split('?')[0]}`),
    request,
    reply,
  );
}
