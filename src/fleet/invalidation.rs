//! Invalidation across the fleet: a purge (admin API, write-through after a write, a refused
//! credential) deletes the entries from Redis in one Lua script (through the index sets, so a
//! reference id is found in every partition), bumps the account's write generation (so that no
//! fetch begun before it stores its answer), and publishes the scope, encrypted, on the `inv`
//! channel; the subscriber task applies received scopes to this sidecar's L1, relays `filled`
//! announcements to the lease waiters, and drops L1 when the subscription was lost. It must not
//! serve lookups or decide caching.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use crate::cache::{AnswerStore, LocalStore, PurgeScope};
use crate::credentials::Partition;
use crate::routes::{AccountId, IntegrationId, ReferenceId, Subject};

use super::store::{GENERATION_TTL_MS, L2};
use super::FleetKeys;

/// Bumps a generation, deletes the members of the index sets (and the sets), optionally every
/// entry matching a pattern (a purge of everything), and publishes the scope. Reply: entries
/// deleted.
pub(crate) const INVALIDATE_SCRIPT: &str = r"
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local deleted = 0
for i = 2, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, member in ipairs(members) do deleted = deleted + redis.call('DEL', member) end
  redis.call('DEL', KEYS[i])
end
if ARGV[4] ~= '' then
  local cursor = '0'
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', ARGV[4], 'COUNT', 1000)
    cursor = page[1]
    for _, key in ipairs(page[2]) do deleted = deleted + redis.call('DEL', key) end
  until cursor == '0'
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return deleted
";

/// The shortest and longest pause before subscribing again after the subscription broke.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(1);
/// How often the subscriber pings on its connection: a frozen Redis sends nothing, and only a
/// ping that goes unanswered tells the subscription is gone.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Pure: a purge scope as the `inv` channel carries it (before encryption).
pub fn encode_scope(scope: &PurgeScope) -> Vec<u8> {
    let value = match scope {
        PurgeScope::Lookup {
            account_id,
            reference_id,
        } => {
            serde_json::json!({"k": "lookup", "a": account_id.to_string(), "r": reference_id.as_str()})
        }
        PurgeScope::Integration {
            account_id,
            integration_id,
        } => {
            serde_json::json!({"k": "integration", "a": account_id.to_string(), "i": integration_id.to_string()})
        }
        PurgeScope::Account { account_id } => {
            serde_json::json!({"k": "account", "a": account_id.to_string()})
        }
        PurgeScope::Partition {
            partition,
            account_id,
        } => serde_json::json!({
            "k": "partition",
            "a": account_id.to_string(),
            "p": partition.to_bytes().iter().map(|byte| format!("{byte:02x}")).collect::<String>(),
        }),
        PurgeScope::All => serde_json::json!({"k": "all"}),
    };
    value.to_string().into_bytes()
}

/// Pure: the scope in `bytes`, or `None` for anything else.
pub fn decode_scope(bytes: &[u8]) -> Option<PurgeScope> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    let account = || field("a").and_then(AccountId::parse);
    match field("k")? {
        "lookup" => Some(PurgeScope::Lookup {
            account_id: account()?,
            reference_id: ReferenceId::from_decoded(field("r")?)?,
        }),
        "integration" => Some(PurgeScope::Integration {
            account_id: account()?,
            integration_id: IntegrationId::parse(field("i")?)?,
        }),
        "account" => Some(PurgeScope::Account {
            account_id: account()?,
        }),
        "partition" => {
            let hex = field("p")?;
            if hex.len() != 32 || !hex.is_ascii() {
                return None;
            }
            let mut bytes = [0u8; 16];
            for (index, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).ok()?;
            }
            Some(PurgeScope::Partition {
                partition: Partition::from_bytes(bytes),
                account_id: account()?,
            })
        }
        "all" => Some(PurgeScope::All),
        _ => None,
    }
}

/// The Redis side of a scope: the generation it bumps, the index sets whose entries go, and
/// the key pattern of a purge of everything.
fn redis_side(keys: &FleetKeys, scope: &PurgeScope) -> (String, Vec<String>, String) {
    let account_generation = |account_id: &AccountId| keys.key("g", &keys.account_hash(account_id));
    match scope {
        PurgeScope::Lookup {
            account_id,
            reference_id,
        } => {
            let subject = Subject::Reference(reference_id.clone());
            let index = keys.key("x", &keys.subject_hash(account_id, &subject));
            (account_generation(account_id), vec![index], String::new())
        }
        PurgeScope::Integration {
            account_id,
            integration_id,
        } => {
            let subject = Subject::Integration(*integration_id);
            let index = keys.key("x", &keys.subject_hash(account_id, &subject));
            (account_generation(account_id), vec![index], String::new())
        }
        PurgeScope::Account { account_id } => {
            let index = keys.key("x", &keys.account_hash(account_id));
            (account_generation(account_id), vec![index], String::new())
        }
        PurgeScope::Partition {
            partition,
            account_id,
        } => {
            let index = keys.key("x", &keys.partition_account_hash(*partition, account_id));
            (account_generation(account_id), vec![index], String::new())
        }
        // The prefix is `ztrs:v1:` and 16 hex digits: nothing in it is special to `MATCH`.
        PurgeScope::All => (
            keys.key("g", "all"),
            Vec::new(),
            format!("{}e:*", keys.prefix()),
        ),
    }
}

/// Deletes `scope` from Redis and tells every sidecar. Says how many entries Redis dropped (0
/// when Redis did not answer: the local purge has happened anyway).
pub(crate) async fn invalidate(l2: &L2, scope: &PurgeScope) -> u64 {
    let keys = &l2.fleet.keys;
    let (generation, indexes, pattern) = redis_side(keys, scope);
    let channel = keys.invalidation_channel();
    let payload = keys.seal(&channel, &encode_scope(scope));
    let mut invocation = l2.invalidate.prepare_invoke();
    invocation.key(&generation);
    for index in &indexes {
        invocation.key(index);
    }
    invocation
        .arg(&channel)
        .arg(payload)
        .arg(GENERATION_TTL_MS)
        .arg(&pattern);
    match l2
        .fleet
        .redis
        .invoke::<u64>("invalidate", &invocation)
        .await
    {
        Ok(deleted) => {
            l2.fleet.redis.metrics().record_invalidation_sent();
            deleted
        }
        Err(_down) => 0,
    }
}

/// Keeps a subscription to the `filled` and `inv` channels for as long as the store lives:
/// relays fills to the lease waiters, applies invalidations to L1, and after a lost subscription
/// drops L1 (something may have been invalidated meanwhile) once it is subscribed again.
pub(crate) async fn subscribe_forever(l2: Weak<L2>, local: LocalStore) {
    let mut pause = RESUBSCRIBE_MIN;
    let mut was_subscribed = false;
    loop {
        let Some(strong) = l2.upgrade() else {
            return;
        };
        let subscribed = subscribe_once(&strong, &local, &mut was_subscribed).await;
        strong.fleet.redis.set_subscription_lost(true);
        drop(strong);
        pause = if subscribed {
            RESUBSCRIBE_MIN
        } else {
            (pause * 2).min(RESUBSCRIBE_MAX)
        };
        tokio::time::sleep(pause).await;
    }
}

/// One subscription, until it breaks. Says whether it got as far as subscribing.
async fn subscribe_once(l2: &Arc<L2>, local: &LocalStore, was_subscribed: &mut bool) -> bool {
    let keys = &l2.fleet.keys;
    let redis = &l2.fleet.redis;
    let timeout = redis.timeout();
    let filled_channel = keys.filled_channel();
    let inv_channel = keys.invalidation_channel();
    let connect = async {
        let mut pubsub = redis.client().get_async_pubsub().await?;
        pubsub.subscribe(&filled_channel).await?;
        pubsub.subscribe(&inv_channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = match tokio::time::timeout(timeout.max(Duration::from_millis(500)), connect).await
    {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(_)) | Err(_) => {
            redis
                .metrics()
                .record_call("subscribe", super::metrics::CallOutcome::Error, None);
            return false;
        }
    };
    redis
        .metrics()
        .record_call("subscribe", super::metrics::CallOutcome::Ok, None);
    if *was_subscribed {
        // Invalidations sent while this sidecar was not listening are lost: what L1 holds may
        // be one of them.
        l2.purges.fetch_add(1, Ordering::SeqCst);
        let dropped = local.purge(&PurgeScope::All).await;
        redis.metrics().record_l1_flush();
        tracing::warn!(
            dropped,
            "the fleet subscription was lost; the local cache was dropped"
        );
    }
    *was_subscribed = true;
    redis.set_subscription_lost(false);
    redis.note_answered();
    let (mut sink, mut stream) = pubsub.split();
    let mut pings = tokio::time::interval(PING_EVERY);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return true;
                };
                let channel = message.get_channel_name();
                let payload = message.get_payload_bytes();
                if channel == filled_channel {
                    if let Ok(hash) = std::str::from_utf8(payload) {
                        let _ = l2.filled.send(Arc::from(hash));
                    }
                } else if channel == inv_channel {
                    let scope = keys
                        .open(&inv_channel, payload)
                        .and_then(|plain| decode_scope(&plain));
                    if let Some(scope) = scope {
                        redis.metrics().record_invalidation_received();
                        l2.purges.fetch_add(1, Ordering::SeqCst);
                        local.purge(&scope).await;
                    }
                }
            }
            _ = pings.tick() => {
                // In subscribed mode RESP2 answers a PING with `["pong", ""]`: any reply will do.
                let ping = tokio::time::timeout(timeout.max(Duration::from_millis(250)), sink.ping::<redis::Value>());
                if !matches!(ping.await, Ok(Ok(_))) {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_round_trips_and_garbage_is_none() {
        let account_id = AccountId::parse("023e105f4ecef8ad9ca31a8372d0c353").expect("valid");
        let scopes = [
            PurgeScope::Lookup {
                account_id,
                reference_id: ReferenceId::from_decoded("user/1 ü").expect("valid"),
            },
            PurgeScope::Integration {
                account_id,
                integration_id: IntegrationId::parse("182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e")
                    .expect("valid"),
            },
            PurgeScope::Account { account_id },
            PurgeScope::Partition {
                partition: Partition::from_bytes([7; 16]),
                account_id,
            },
            PurgeScope::All,
        ];
        for scope in scopes {
            assert_eq!(decode_scope(&encode_scope(&scope)), Some(scope));
        }
        for garbage in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"k":"lookup","a":"x","r":"y"}"#,
            br#"{"k":"partition","a":"023e105f4ecef8ad9ca31a8372d0c353","p":"\u00e9"}"#,
        ] {
            assert_eq!(decode_scope(garbage), None);
        }
    }
}
