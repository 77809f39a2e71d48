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

test('a lasting 503: the sidecar\'s retries add upstream requests until the breaker opens; the SDK then waits out its Retry-After', { timeout: 45_000 }, async (t) => {
  // This opens the sidecar's shared circuit breaker; the test ends only once it has closed again.
  const { user, sdk } = await newUser('outage');
  const referenceId = fresh('outage');
  await seedIntegration(referenceId);
  await injectFault({ fault: 'status', status: 503 }, 100);
  const error = await rejection(() => getByReference(sdk.client, referenceId), InternalServerError);
  const upstream = await upstreamRequestsOf(user);
  t.diagnostic(`SDK attempts ${sdk.attempts}, upstream requests ${upstream}`);
  assert.equal(sdk.attempts, 3);
  // Attempt 1: one request and two sidecar retries; attempt 2: two more, and the fifth
  // consecutive failure opens the breaker; attempt 3: answered by the open breaker. Without the
  // sidecar the SDK would have sent 3.
  assert.equal(upstream, 5);
  assert.equal(error.status, 503);
  assert.equal(error.errors[0].code, 10503);
  assert.match(error.headers.get('cache-status'), /detail=upstream-down/);
  const retryAfter = Number(error.headers.get('retry-after'));
  assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter} is one the SDK honours`);

  // Cloudflare is back. The next lookup meets the open breaker, the SDK waits the Retry-After it
  // was given, and its retry is the breaker's probe.
  await clearFaults();
  const started = Date.now();
  const integration = await getByReference(sdk.client, referenceId);
  assert.equal(integration.reference_id, referenceId);
  assert.equal(await upstreamRequestsOf(user), upstream + 1);
  t.diagnostic(`recovered after ${Date.now() - started} ms and ${sdk.attempts - 3} SDK attempts`);
});
