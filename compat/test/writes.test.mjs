// The write flow through the sidecar: create, list, update and delete pass through uncached, and
// each successful write drops the cached lookups it made stale, in every credential partition,
// so the SDK sees its own writes at once.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { NotFoundError } from 'cloudflare';

import {
  ACCOUNT,
  clearFaults,
  fresh,
  getByReference,
  newUser,
  rejection,
  upstreamRequestsOf,
} from '../lib/harness.mjs';

afterEach(clearFaults);

function cacheStatus(withResponse) {
  return withResponse.response.headers.get('cache-status');
}

test('create, get, update, get (the update is visible at once), delete, get (NotFoundError)', { timeout: 30_000 }, async () => {
  const { user, sdk } = await newUser('writer');
  const integrations = sdk.client.zeroTrust.riskScoring.integrations;
  const referenceId = `${fresh('write flow')}/ü+日本`;

  const created = await integrations.create({
    account_id: ACCOUNT,
    integration_type: 'Okta',
    tenant_url: 'https://before.okta.com',
    reference_id: referenceId,
  });
  assert.equal(created.reference_id, referenceId);
  assert.equal(created.tenant_url, 'https://before.okta.com');
  assert.equal(created.active, true);

  const first = await integrations.references.get(referenceId, { account_id: ACCOUNT }).withResponse();
  assert.deepEqual(first.data, created);
  assert.match(cacheStatus(first), /fwd=miss; stored/);
  const cached = await integrations.references.get(referenceId, { account_id: ACCOUNT }).withResponse();
  assert.match(cacheStatus(cached), /; hit;/);
  const byId = await integrations.get(created.id, { account_id: ACCOUNT }).withResponse();
  assert.deepEqual(byId.data, created);

  const listed = [];
  for await (const integration of integrations.list({ account_id: ACCOUNT })) {
    listed.push(integration);
  }
  assert.ok(listed.some((integration) => integration.id === created.id), 'the list shows the new integration');

  const updated = await integrations.update(created.id, {
    account_id: ACCOUNT,
    active: true,
    tenant_url: 'https://after.okta.com',
  });
  assert.equal(updated.id, created.id);
  assert.equal(updated.tenant_url, 'https://after.okta.com');
  assert.equal(updated.reference_id, referenceId);

  // The cached lookups (by reference id and by id) were dropped by the update.
  const afterUpdate = await integrations.references.get(referenceId, { account_id: ACCOUNT }).withResponse();
  assert.equal(afterUpdate.data.tenant_url, 'https://after.okta.com');
  assert.match(cacheStatus(afterUpdate), /fwd=miss; stored/);
  const byIdAfterUpdate = await integrations.get(created.id, { account_id: ACCOUNT });
  assert.equal(byIdAfterUpdate.tenant_url, 'https://after.okta.com');

  const deleted = await integrations.delete(created.id, { account_id: ACCOUNT });
  assert.equal(deleted, null);

  const gone = await rejection(() => integrations.references.get(referenceId, { account_id: ACCOUNT }), NotFoundError);
  assert.equal(gone.errors[0].code, 1000);
  assert.match(gone.headers.get('cache-status'), /fwd=miss/);
  await rejection(() => integrations.get(created.id, { account_id: ACCOUNT }), NotFoundError);

  // create, get, get(hit), get by id, list, update, get, get by id, delete, get, get by id
  assert.equal(await upstreamRequestsOf(user), 10);
});

test('a write by one credential is visible at once to another credential that had the lookup cached', { timeout: 30_000 }, async () => {
  const writer = await newUser('writer-a');
  const reader = await newUser('reader-b');
  const referenceId = fresh('shared');
  const created = await writer.sdk.client.zeroTrust.riskScoring.integrations.create({
    account_id: ACCOUNT,
    integration_type: 'Okta',
    tenant_url: 'https://one.okta.com',
    reference_id: referenceId,
  });
  assert.equal((await getByReference(reader.sdk.client, referenceId)).tenant_url, 'https://one.okta.com');
  assert.equal((await getByReference(reader.sdk.client, referenceId)).tenant_url, 'https://one.okta.com');
  assert.equal(await upstreamRequestsOf(reader.user), 1, "the reader's second lookup was a hit");

  await writer.sdk.client.zeroTrust.riskScoring.integrations.update(created.id, {
    account_id: ACCOUNT,
    active: false,
    tenant_url: 'https://two.okta.com',
  });
  const seen = await getByReference(reader.sdk.client, referenceId);
  assert.equal(seen.tenant_url, 'https://two.okta.com');
  assert.equal(seen.active, false);
  assert.equal(await upstreamRequestsOf(reader.user), 2);
});

test('changing the reference id: the old one is not found at once, the new one is found', { timeout: 30_000 }, async () => {
  const { sdk } = await newUser('renamer');
  const integrations = sdk.client.zeroTrust.riskScoring.integrations;
  const oldReference = fresh('old name');
  const newReference = fresh('new name');
  const created = await integrations.create({
    account_id: ACCOUNT,
    integration_type: 'Okta',
    tenant_url: 'https://rename.okta.com',
    reference_id: oldReference,
  });
  assert.equal((await getByReference(sdk.client, oldReference)).id, created.id);
  // A cached "not found" of the new name must go too.
  await rejection(() => getByReference(sdk.client, newReference), NotFoundError);

  await integrations.update(created.id, {
    account_id: ACCOUNT,
    active: true,
    tenant_url: 'https://rename.okta.com',
    reference_id: newReference,
  });
  await rejection(() => getByReference(sdk.client, oldReference), NotFoundError);
  assert.equal((await getByReference(sdk.client, newReference)).id, created.id);
});
