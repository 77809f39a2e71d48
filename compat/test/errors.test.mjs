// The SDK's error classes for what Cloudflare (here, the simulated API behind the sidecar) or the
// sidecar itself answers: NotFoundError, PermissionDeniedError, AuthenticationError,
// BadRequestError, RateLimitError and InternalServerError, each with Cloudflare's error code.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import {
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
} from 'cloudflare';

import {
  ACCOUNT,
  clearFaults,
  control,
  countingClient,
  firstCode,
  fresh,
  getByReference,
  injectFault,
  newUser,
  rejection,
  seedIntegration,
  upstreamRequestsOf,
  upstreamTotal,
} from '../lib/harness.mjs';

afterEach(clearFaults);

test('an unknown reference id is a NotFoundError (404, code 1000), and the repeat is answered from the negative cache', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('not-found');
  const referenceId = fresh('missing');

  const error = await rejection(() => getByReference(sdk.client, referenceId), NotFoundError);
  assert.equal(error.status, 404);
  assert.equal(firstCode(error), 1000);
  assert.match(error.headers.get('cache-status'), /fwd=miss; stored; fwd-status=404/);
  assert.equal(sdk.attempts, 1, 'the SDK does not retry a 404');

  const again = await rejection(() => getByReference(sdk.client, referenceId), NotFoundError);
  assert.equal(firstCode(again), 1000);
  assert.match(again.headers.get('cache-status'), /; hit; ttl=\d+/);
  assert.equal(await upstreamRequestsOf(user), 1);
});

test('a wrong token is a PermissionDeniedError (403, code 10000), never cached and never retried', { timeout: 30_000 }, async () => {
  const referenceId = fresh('wrong-token');
  await seedIntegration(referenceId);
  const sdk = countingClient({ apiToken: fresh('wrong-token') });
  const before = await upstreamTotal();

  for (let round = 1; round <= 2; round += 1) {
    const error = await rejection(() => getByReference(sdk.client, referenceId), PermissionDeniedError);
    assert.equal(error.status, 403);
    assert.equal(firstCode(error), 10000);
    assert.match(error.headers.get('cache-status'), /fwd=miss; fwd-status=403/);
    assert.doesNotMatch(error.headers.get('cache-status'), /stored/);
  }
  assert.equal(sdk.attempts, 2, 'the SDK does not retry a 403');
  assert.equal(await upstreamTotal(), before + 2, 'each 403 came from upstream: none was cached');
});

test('a token not allowed on the account is a PermissionDeniedError (403, code 9109)', { timeout: 30_000 }, async () => {
  const { sdk } = await newUser('other-account', { accounts: ['9a7806061c88ada191ed06f989cc3dac'] });
  const referenceId = fresh('other-account');
  await seedIntegration(referenceId);
  const error = await rejection(() => getByReference(sdk.client, referenceId), PermissionDeniedError);
  assert.equal(firstCode(error), 9109);
});

test('a 401 is an AuthenticationError, relayed and not retried', { timeout: 30_000 }, async () => {
  // Cloudflare answers a bad token with 403 (above); the SDK maps 401 to AuthenticationError,
  // so a 401 is injected to check that the sidecar relays it as it came.
  const { user, sdk } = await newUser('unauthenticated');
  const referenceId = fresh('unauthenticated');
  await seedIntegration(referenceId);
  await injectFault({ fault: 'status', status: 401 });
  const error = await rejection(() => getByReference(sdk.client, referenceId), AuthenticationError);
  assert.equal(error.status, 401);
  assert.equal(firstCode(error), 10000);
  assert.equal(sdk.attempts, 1);
  assert.equal(await upstreamRequestsOf(user), 1);
  // Not cached: the next lookup asks again and gets the integration.
  const integration = await getByReference(sdk.client, referenceId);
  assert.equal(integration.reference_id, referenceId);
  assert.equal(await upstreamRequestsOf(user), 2);
});

test('a malformed account id is a BadRequestError (400, code 7003) from the sidecar, costing no upstream request', { timeout: 30_000 }, async () => {
  const { sdk } = await newUser('bad-account');
  const before = await upstreamTotal();
  const error = await rejection(
    () => sdk.client.zeroTrust.riskScoring.integrations.references.get('anything', { account_id: 'not-an-account' }),
    BadRequestError,
  );
  assert.equal(error.status, 400);
  assert.equal(firstCode(error), 7003);
  assert.equal(await upstreamTotal(), before);
});

test('over the rate limit: a RateLimitError (429, code 971) at once, then the cool-down answers locally while cached answers keep being served', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('rate-limited');
  const ids = [fresh('rl-a'), fresh('rl-b'), fresh('rl-c'), fresh('rl-d')];
  for (const id of ids) {
    await seedIntegration(id);
  }
  // Cloudflare's rule, scaled down: 20 requests per 5 minutes per user, then 5 minutes blocked.
  // The policy applies to every user of the simulator; it is restored below.
  await control('POST', '/rate_limit', { quota: 20, window_secs: 300, block_secs: 300, reset: true });
  try {
    await getByReference(sdk.client, ids[0]);
    await getByReference(sdk.client, ids[1]);
    // The user's other tools spend the rest of the window behind the sidecar's back: the sidecar
    // last saw 18 calls left (well above its reserve), so it asks, and Cloudflare says 429.
    await control('POST', '/usage', { user, used: 20 });
    const started = Date.now();
    const error = await rejection(() => getByReference(sdk.client, ids[2]), RateLimitError);
    assert.equal(error.status, 429);
    assert.equal(firstCode(error), 971);
    assert.equal(error.headers.get('retry-after'), '300');
    // SDK 7.x waits whatever Retry-After says before retrying (here five minutes). The sidecar
    // adds `x-should-retry: false` to a 429 whose wait is over 60 s, so the SDK gives up at once
    // and its retries neither hang the caller nor extend the block.
    assert.equal(error.headers.get('x-should-retry'), 'false');
    assert.ok(Date.now() - started < 5_000, 'the SDK did not wait for Retry-After');
    assert.equal(sdk.attempts, 3, 'no SDK retry of the 429');
    assert.equal(await upstreamRequestsOf(user), 3);

    // Cached answers are still served during the block...
    const cached = await getByReference(sdk.client, ids[0]);
    assert.equal(cached.reference_id, ids[0]);
    // ...and a miss is refused by the sidecar's cool-down without asking Cloudflare again.
    const local = await rejection(() => getByReference(sdk.client, ids[3]), RateLimitError);
    assert.equal(firstCode(local), 971);
    assert.match(local.headers.get('cache-status'), /detail=rate-limited/);
    assert.ok(Number(local.headers.get('retry-after')) > 60, local.headers.get('retry-after'));
    assert.equal(local.headers.get('x-should-retry'), 'false');
    assert.equal(await upstreamRequestsOf(user), 3, 'the cool-down spent no upstream request');
  } finally {
    await control('POST', '/rate_limit', { quota: 1200, window_secs: 300, block_secs: 300, reset: true });
  }
});

test('a 500 is an InternalServerError after the SDK\'s two retries, and the sidecar adds no upstream request of its own', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('internal-error');
  const referenceId = fresh('internal-error');
  await seedIntegration(referenceId);
  await injectFault({ fault: 'status', status: 500 }, 3);
  const error = await rejection(() => getByReference(sdk.client, referenceId), InternalServerError);
  assert.equal(error.status, 500);
  assert.equal(firstCode(error), 10001);
  assert.match(error.headers.get('cache-status'), /fwd=miss; fwd-status=500/);
  assert.equal(sdk.attempts, 3, 'the SDK tried three times (maxRetries 2)');
  // One upstream request per SDK attempt: the sidecar never retries a 500 and never caches it.
  assert.equal(await upstreamRequestsOf(user), 3);
});

test('a 200 whose body is not a Cloudflare envelope becomes an InternalServerError (502, code 10506) from the sidecar, and is not cached', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('garbage');
  const referenceId = fresh('garbage');
  await seedIntegration(referenceId);
  // Truncated JSON three times: the SDK's first attempt and its two retries.
  await injectFault({ fault: 'garbage' }, 3);
  const error = await rejection(() => getByReference(sdk.client, referenceId), InternalServerError);
  assert.equal(error.status, 502);
  assert.equal(firstCode(error), 10506);
  assert.match(error.headers.get('cache-status'), /fwd-status=200; detail=upstream-invalid-body/);
  assert.equal(sdk.attempts, 3);
  assert.equal(await upstreamRequestsOf(user), 3, 'one upstream request per SDK attempt');
  const integration = await getByReference(sdk.client, referenceId);
  assert.equal(integration.reference_id, referenceId);
  assert.equal(await upstreamRequestsOf(user), 4, 'the unusable body was not cached');
});
