/** The REST API: `buildApi(deps)` and what it needs. */
export { buildApi, API_PREFIX, type ApiDeps, type AgentStatus } from './server.js';
export { TokenAuth, MIN_TOKEN_LENGTH, NO_AUTH_PRINCIPAL, type Principal } from './auth.js';
export { mapError, type MappedError } from './errors.js';
export { REQUESTS_TOTAL, REQUEST_DURATION } from './metrics.js';
