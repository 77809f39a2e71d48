// Shared helpers of the compatibility suite: the environment `.ci/compat` sets, the simulator's
// control API (faults, rate limit, counters, seeding; see src/simulator/control.rs), and SDK
// clients pointed at the sidecar the way a user points them: `baseURL` and `apiToken`, or the
// CLOUDFLARE_BASE_URL / CLOUDFLARE_API_TOKEN environment variables.

import { randomBytes } from 'node:crypto';

import Cloudflare from 'cloudflare';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run the suite with .ci/compat`);
  }
  return value;
}

/** The sidecar, as an SDK user configures it. */
export const BASE_URL = required('CLOUDFLARE_BASE_URL');
export const DEV_TOKEN = required('CLOUDFLARE_API_TOKEN');
/** The simulator's control API (not part of the simulated Cloudflare API). */
export const CONTROL_URL = required('ZT_COMPAT_CONTROL_URL');

/** The account `--dev` seeds: the example account id of Cloudflare's API docs. */
export const ACCOUNT = '023e105f4ecef8ad9ca31a8372d0c353';
/** The user that owns the dev token. */
export const DEV_USER = 'dev@example.com';

/** How long one control request may take. */
const CONTROL_TIMEOUT_MS = 5_000;

/** A name no other test (and no earlier run against the same sidecar) uses. */
export function fresh(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

/** Calls the simulator's control API; throws on anything but a 200. */
export async function control(method, path, body) {
  const response = await fetch(`${CONTROL_URL}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(CONTROL_TIMEOUT_MS),
  });
  const text = await response.text();
  if (response.status !== 200) {
    throw new Error(`control ${method} ${path}: ${response.status} ${text}`);
  }
  return JSON.parse(text);
}

/** Queues `fault` for the next `count` requests that reach the simulated Cloudflare API. */
export function injectFault(fault, count = 1) {
  return control('POST', '/faults', { ...fault, count });
}

/** Drops every queued fault and the added latency: run after each test. */
export async function clearFaults() {
  await control('POST', '/faults', { clear: true });
  await control('POST', '/latency', { ms: 0 });
}

/** Requests that reached the simulated Cloudflare API with `user`'s credentials, faulted ones included. */
export async function upstreamRequestsOf(user) {
  const counters = await control('GET', `/counters?${new URLSearchParams({ user })}`);
  return counters.users[user] ?? 0;
}

/** Every request that reached the simulated Cloudflare API, whoever sent it. */
export async function upstreamTotal() {
  return (await control('GET', '/counters')).total;
}

/** The most recent requests the simulator received: method, path (still encoded), user, route. */
export async function lastUpstreamRequests(limit) {
  return (await control('GET', `/requests?limit=${limit}`)).requests;
}

/** Stores an integration directly in the simulator (not through the sidecar) and returns it. */
export function seedIntegration(referenceId, tenantUrl = 'https://seeded.okta.com') {
  return control('POST', '/integrations', {
    account: ACCOUNT,
    reference_id: referenceId,
    tenant_url: tenantUrl,
  });
}

/**
 * A user of its own, so that its upstream requests can be counted apart and its rate limit and
 * the sidecar's per-credential budget and cool-down touch no other test. `fetch` counts every
 * HTTP request the SDK itself makes (its retries included): `sdk.attempts`.
 */
export async function newUser(name, { accounts = [ACCOUNT], ...options } = {}) {
  const user = `${fresh(name)}@compat.test`;
  const token = fresh('compat-token');
  await control('POST', '/tokens', { token, user, accounts });
  return { user, token, sdk: countingClient({ apiToken: token, ...options }) };
}

/** An SDK client pointed at the sidecar whose `attempts` counts the HTTP requests it sends. */
export function countingClient(options = {}) {
  const counted = { attempts: 0 };
  counted.client = new Cloudflare({
    baseURL: BASE_URL,
    ...options,
    fetch: (url, init) => {
      counted.attempts += 1;
      return fetch(url, init);
    },
  });
  return counted;
}

/** The SDK's lookup by reference id. */
export function getByReference(client, referenceId) {
  return client.zeroTrust.riskScoring.integrations.references.get(referenceId, {
    account_id: ACCOUNT,
  });
}

/** Runs `call`, expects it to reject with an instance of `ErrorClass`, and returns the error. */
export async function rejection(call, ErrorClass) {
  try {
    await call();
  } catch (error) {
    if (!(error instanceof ErrorClass)) {
      const cause = error?.cause ? ` (cause: ${error.cause}${error.cause.cause ? `: ${error.cause.cause}` : ''})` : '';
      throw new Error(`expected ${ErrorClass.name}, got ${error?.constructor?.name}: ${error}${cause}`, {
        cause: error,
      });
    }
    return error;
  }
  throw new Error(`expected ${ErrorClass.name}, but the call succeeded`);
}

/** The first Cloudflare error code of an SDK error. */
export function firstCode(error) {
  return error.errors?.[0]?.code;
}

export { Cloudflare };
