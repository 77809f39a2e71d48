// The SDK's own retries do not multiply the traffic that reaches Cloudflare. Each test counts
// what the SDK sent (`sdk.attempts`, through the client's `fetch` option) and what reached the
// simulated Cloudflare API with that test's own credential (the simulator's per-user counter).
//
// What the sidecar does about retries (src/proxy.rs):
// - it never retries a 4xx or a 500 and never caches 401/403/429/5xx, so an SDK retry of a 500
//   is exactly one upstream request, as without the sidecar;
// - it retries connection failures and 502/503/504 itself (at most twice, 50-200 ms apart,
//   behind a shared circuit breaker), so a short outage is absorbed before the SDK sees it;
// - a relayed 429 whose Retry-After is over 60 s carries `x-should-retry: false`, so the SDK
//   gives up at once instead of retrying into the block (see errors.test.mjs);
// - after a 429 the credential cools down: lookups are answered locally (429 code 971, or a
//   cached answer) without calling Cloudflare until Retry-After has passed;
// - but a 502/503/504 that lasts is retried by the sidecar on every SDK attempt, so it costs up
//   to three upstream requests per SDK attempt until the circuit breaker opens (5 consecutive
//   failures by default); the breaker then answers a fast local 503 (code 10503) whose
//   Retry-After the SDK honours (the last test measures this);
// - identical concurrent lookups are coalesced into one upstream request, and a fetch runs in a
//   task of its own, so an SDK attempt that timed out and its retry share one upstream request,
//   and a later retry is a cache hit.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { InternalServerError } from 'cloudflare';

import {
  ACCOUNT,
  clearFaults,
  fresh,
  getByReference,
  injectFault,
  newUser,
  rejection,
  seedIntegration,
  upstreamRequestsOf,
} from '../lib/harness.mjs';

afterEach(clearFaults);

test('a single 500: the SDK retries once, upstream sees two requests, and the success is cached', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('one-500');
  const referenceId = fresh('one-500');
  await seedIntegration(referenceId);
  await injectFault({ fault: 'status', status: 500 });
  const integration = await getByReference(sdk.client, referenceId);
  assert.equal(integration.reference_id, referenceId);
  assert.equal(sdk.attempts, 2);
  assert.equal(await upstreamRequestsOf(user), 2);
  await getByReference(sdk.client, referenceId);
  assert.equal(await upstreamRequestsOf(user), 2, 'the repeat is a hit');
});

test('a 503 edge error page or a connection reset is retried by the sidecar before the SDK sees it', { timeout: 30_000 }, async () => {
  for (const fault of [{ fault: 'status', status: 503 }, { fault: 'reset' }]) {
    const { user, sdk } = await newUser('absorbed');
    const referenceId = fresh('absorbed');
    await seedIntegration(referenceId);
    await injectFault(fault);
    const { data, response } = await sdk.client.zeroTrust.riskScoring.integrations.references
      .get(referenceId, { account_id: ACCOUNT })
      .withResponse();
    assert.equal(data.reference_id, referenceId, JSON.stringify(fault));
    assert.match(response.headers.get('cache-status'), /fwd=miss; stored; fwd-status=200/);
    assert.equal(sdk.attempts, 1, `${JSON.stringify(fault)}: the SDK did not have to retry`);
    assert.equal(await upstreamRequestsOf(user), 2, `${JSON.stringify(fault)}: the failure and the sidecar's retry`);
  }
});

test('an SDK attempt that times out and its retries share one upstream request', { timeout: 30_000 }, async () => {
  // The simulated Cloudflare API takes 800 ms; the SDK gives up on an attempt after 300 ms and
  // retries (0.5 s, 1 s, ... backoff). Its retries join the fetch still in flight or hit the
  // entry it stored.
  const { user, sdk } = await newUser('timeout', { timeout: 300, maxRetries: 4 });
  const referenceId = fresh('timeout');
  await seedIntegration(referenceId);
  await injectFault({ fault: 'latency', ms: 800 });
  const integration = await getByReference(sdk.client, referenceId);
  assert.equal(integration.reference_id, referenceId);
  assert.ok(sdk.attempts >= 2, `the SDK retried (${sdk.attempts} attempts)`);
  assert.equal(await upstreamRequestsOf(user), 1);
});

test('concurrent identical lookups are coalesced into one upstream request', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('coalesced');
  const referenceId = fresh('coalesced');
  const seeded = await seedIntegration(referenceId);
  // The first request is slow, so the others arrive while it is in flight.
  await injectFault({ fault: 'latency', ms: 300 });
  const callers = 8;
  const answers = await Promise.all(
    Array.from({ length: callers }, () =>
      sdk.client.zeroTrust.riskScoring.integrations.references
        .get(referenceId, { account_id: seeded.account_tag })
        .withResponse(),
    ),
  );
  const statuses = answers.map(({ response }) => response.headers.get('cache-status'));
  for (const { data } of answers) {
    assert.deepEqual(data, seeded);
  }
  assert.equal(statuses.filter((status) => /fwd=miss; stored/.test(status)).length, 1, statuses.join('\n'));
  assert.ok(
    statuses.every((status) => /fwd=miss; (stored|collapsed)|; hit;/.test(status)),
    statuses.join('\n'),
  );
  assert.equal(sdk.attempts, callers);
  assert.equal(await upstreamRequestsOf(user), 1);
});

test('a lasting 503: the sidecar retries it itself and tells the SDK not to pile on (x-should-retry: false), so one SDK call costs the sidecar\'s attempts only', { timeout: 45_000 }, async (t) => {
  const { user, sdk } = await newUser('outage');
  const referenceId = fresh('outage');
  await seedIntegration(referenceId);
  await injectFault({ fault: 'status', status: 503 }, 3);
  const error = await rejection(() => getByReference(sdk.client, referenceId), InternalServerError);
  const upstream = await upstreamRequestsOf(user);
  t.diagnostic(`SDK attempts ${sdk.attempts}, upstream requests ${upstream}`);
  // The sidecar's request and its two retries, then Cloudflare's 503 relayed with
  // `x-should-retry: false`: the SDK does not retry, so its three attempts do not become nine
  // upstream requests.
  assert.equal(error.status, 503);
  assert.equal(error.headers.get('x-should-retry'), 'false');
  assert.equal(sdk.attempts, 1);
  assert.equal(upstream, 3);

  // Cloudflare is back: the next lookup is answered.
  await clearFaults();
  const integration = await getByReference(sdk.client, referenceId);
  assert.equal(integration.reference_id, referenceId);
  assert.equal(await upstreamRequestsOf(user), upstream + 1);
});
