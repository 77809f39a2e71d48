// Lookups by reference id through the sidecar with Cloudflare's TypeScript SDK: a client
// configured only from the environment, the cache as the SDK sees it (Cache-Status), and
// reference ids with characters the SDK percent-encodes.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import Cloudflare from 'cloudflare';

import {
  ACCOUNT,
  DEV_USER,
  clearFaults,
  fresh,
  getByReference,
  lastUpstreamRequests,
  newUser,
  seedIntegration,
  upstreamRequestsOf,
} from '../lib/harness.mjs';

afterEach(clearFaults);

/** The SDK's own path encoding (`encodeURIPath` in the SDK's internal/utils/path). */
function sdkSegment(referenceId) {
  return referenceId.replace(/[^A-Za-z0-9\-._~!$&'()*+,;=:@]+/g, encodeURIComponent);
}

test('a client configured only by CLOUDFLARE_BASE_URL and CLOUDFLARE_API_TOKEN reads the seeded integrations', { timeout: 30_000 }, async () => {
  const client = new Cloudflare(); // as the README tells users: everything from the environment
  const seeded = [
    ['3701e70b-5de4-4d9d-8972-f5aa994d9057', 'https://dev-tenant.okta.com'],
    ['okta-production', 'https://production-tenant.okta.com'],
    ['team a/okta+eu', 'https://eu-tenant.okta-emea.com'],
  ];
  for (const [referenceId, tenantUrl] of seeded) {
    const integration = await getByReference(client, referenceId);
    assert.equal(integration.reference_id, referenceId);
    assert.equal(integration.tenant_url, tenantUrl);
    assert.equal(integration.account_tag, ACCOUNT);
    assert.equal(integration.integration_type, 'Okta');
    assert.equal(integration.active, true);
    assert.match(integration.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(integration.well_known_url, `/.well-known/sse-configuration/${integration.id}/`);
    assert.ok(!Number.isNaN(Date.parse(integration.created_at)), integration.created_at);
  }
});

test('get by reference id: a miss is fetched once and stored, the repeat is a hit', { timeout: 30_000 }, async () => {
  const referenceId = fresh('lookup');
  const seeded = await seedIntegration(referenceId, 'https://lookup.okta.com');
  const client = new Cloudflare();
  const before = await upstreamRequestsOf(DEV_USER);

  const first = await client.zeroTrust.riskScoring.integrations.references
    .get(referenceId, { account_id: ACCOUNT })
    .withResponse();
  assert.deepEqual(first.data, seeded);
  assert.match(first.response.headers.get('cache-status'), /fwd=miss; stored; fwd-status=200/);
  assert.ok(first.response.headers.get('cf-ray'), 'cf-ray is relayed');
  assert.ok(first.response.headers.get('ratelimit'), 'Ratelimit is relayed on a miss');

  const second = await client.zeroTrust.riskScoring.integrations.references
    .get(referenceId, { account_id: ACCOUNT })
    .withResponse();
  assert.deepEqual(second.data, seeded);
  assert.match(second.response.headers.get('cache-status'), /; hit; ttl=\d+/);
  assert.equal(second.response.headers.get('ratelimit'), null, 'a replayed entry leaves Ratelimit out');
  assert.equal(await upstreamRequestsOf(DEV_USER), before + 1, 'one upstream request for two lookups');
});

test('reference ids with characters the SDK percent-encodes round-trip, and reach Cloudflare encoded as the SDK encodes them', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('encoding');
  const suffix = fresh('');
  const referenceIds = [
    `space and slash/plus+${suffix}`,
    `utf8 ü/ö+ä 日本 ид ${suffix}`,
    `percent 100%25 and %2F and %zz ${suffix}`,
    `query?hash#fragment ${suffix}`,
    `sub-delims !$&'()*+,;=:@~ ${suffix}`,
  ];
  for (const referenceId of referenceIds) {
    const seeded = await seedIntegration(referenceId);
    const before = await upstreamRequestsOf(user);
    const integration = await getByReference(sdk.client, referenceId);
    assert.equal(integration.reference_id, referenceId);
    assert.equal(integration.id, seeded.id);
    assert.equal(await upstreamRequestsOf(user), before + 1);
    // The sidecar decoded the id once and re-encoded it as one segment, exactly as the SDK did.
    const [forwarded] = await lastUpstreamRequests(1);
    assert.equal(forwarded.route, 'reference_get');
    assert.equal(
      forwarded.path,
      `/client/v4/accounts/${ACCOUNT}/zt_risk_scoring/integrations/reference_id/${sdkSegment(referenceId)}`,
    );
    // The same id, asked again, is the same cache entry.
    await getByReference(sdk.client, referenceId);
    assert.equal(await upstreamRequestsOf(user), before + 1, `${referenceId}: the repeat is a hit`);
  }
});
