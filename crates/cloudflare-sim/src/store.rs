//! The simulator's integration records: how a new one is made (UUIDv4 id, RFC 3339 timestamp,
//! well-known URL) and the per-account store with its reference-id index. Pure data, no locking
//! and no I/O; the clock and the random source are parameters.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::Integration;

/// The only integration type Cloudflare offers today.
pub(crate) const INTEGRATION_TYPE_OKTA: &str = "Okta";

/// Another integration of the same account already has that reference id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReferenceTaken;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UpdateError {
    NotFound,
    ReferenceTaken,
}

/// Builds a new active Okta integration. Without a reference id the integration's own id is used,
/// as Cloudflare documents for create.
pub(crate) fn new_integration(
    account_id: &str,
    reference_id: Option<&str>,
    tenant_url: &str,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Integration {
    let id = uuid_v4(rng);
    Integration {
        account_tag: account_id.to_owned(),
        active: true,
        created_at: format_rfc3339_millis(now),
        integration_type: INTEGRATION_TYPE_OKTA.to_owned(),
        reference_id: reference_id.map_or_else(|| id.clone(), str::to_owned),
        tenant_url: tenant_url.to_owned(),
        well_known_url: format!("/.well-known/sse-configuration/{id}/"),
        id,
    }
}

/// A random (version 4, RFC 9562 variant) UUID in its lowercase hyphenated form.
pub(crate) fn uuid_v4(rng: &mut impl Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = String::with_capacity(36);
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC, the shape of Cloudflare's `created_at`. Times before 1970
/// are clamped to the epoch.
pub(crate) fn format_rfc3339_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01 (never negative here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[derive(Default)]
pub(crate) struct Store {
    accounts: HashMap<String, AccountIntegrations>,
    next_sequence: u64,
}

#[derive(Default)]
struct AccountIntegrations {
    by_id: HashMap<String, Stored>,
    id_by_reference: HashMap<String, String>,
}

struct Stored {
    /// Creation order, so that listing is stable.
    sequence: u64,
    integration: Integration,
}

impl Store {
    /// Stores a new integration unless its reference id is taken in its account.
    pub fn insert(&mut self, integration: Integration) -> Result<Integration, ReferenceTaken> {
        let account = self
            .accounts
            .entry(integration.account_tag.clone())
            .or_default();
        if account
            .id_by_reference
            .contains_key(&integration.reference_id)
        {
            return Err(ReferenceTaken);
        }
        account
            .id_by_reference
            .insert(integration.reference_id.clone(), integration.id.clone());
        let stored = Stored {
            sequence: self.next_sequence,
            integration: integration.clone(),
        };
        self.next_sequence += 1;
        account.by_id.insert(integration.id.clone(), stored);
        Ok(integration)
    }

    /// Stores a new integration, first removing the one that had its reference id, if any.
    pub fn upsert_by_reference(&mut self, integration: Integration) -> Integration {
        let existing = self
            .accounts
            .get(&integration.account_tag)
            .and_then(|account| account.id_by_reference.get(&integration.reference_id))
            .cloned();
        if let Some(existing_id) = existing {
            self.delete(&integration.account_tag, &existing_id);
        }
        match self.insert(integration.clone()) {
            Ok(stored) => stored,
            // Unreachable: the only holder of the reference id was just removed.
            Err(ReferenceTaken) => integration,
        }
    }

    pub fn by_reference(&self, account_id: &str, reference_id: &str) -> Option<&Integration> {
        let account = self.accounts.get(account_id)?;
        let id = account.id_by_reference.get(reference_id)?;
        account.by_id.get(id).map(|stored| &stored.integration)
    }

    pub fn by_id(&self, account_id: &str, integration_id: &str) -> Option<&Integration> {
        self.accounts
            .get(account_id)?
            .by_id
            .get(integration_id)
            .map(|stored| &stored.integration)
    }

    /// Every integration of the account, oldest first.
    pub fn list(&self, account_id: &str) -> Vec<Integration> {
        let Some(account) = self.accounts.get(account_id) else {
            return Vec::new();
        };
        let mut stored: Vec<&Stored> = account.by_id.values().collect();
        stored.sort_by_key(|stored| stored.sequence);
        stored
            .into_iter()
            .map(|stored| stored.integration.clone())
            .collect()
    }

    /// Overwrites `active` and `tenant_url`, and `reference_id` when one is given.
    pub fn update(
        &mut self,
        account_id: &str,
        integration_id: &str,
        active: bool,
        tenant_url: String,
        reference_id: Option<String>,
    ) -> Result<Integration, UpdateError> {
        let account = self
            .accounts
            .get_mut(account_id)
            .ok_or(UpdateError::NotFound)?;
        let current_reference = match account.by_id.get(integration_id) {
            Some(stored) => stored.integration.reference_id.clone(),
            None => return Err(UpdateError::NotFound),
        };
        let new_reference = reference_id.unwrap_or_else(|| current_reference.clone());
        if new_reference != current_reference {
            if account.id_by_reference.contains_key(&new_reference) {
                return Err(UpdateError::ReferenceTaken);
            }
            account.id_by_reference.remove(&current_reference);
            account
                .id_by_reference
                .insert(new_reference.clone(), integration_id.to_owned());
        }
        let stored = account
            .by_id
            .get_mut(integration_id)
            .ok_or(UpdateError::NotFound)?;
        stored.integration.active = active;
        stored.integration.tenant_url = tenant_url;
        stored.integration.reference_id = new_reference;
        Ok(stored.integration.clone())
    }

    pub fn delete(&mut self, account_id: &str, integration_id: &str) -> Option<Integration> {
        let account = self.accounts.get_mut(account_id)?;
        let stored = account.by_id.remove(integration_id)?;
        account
            .id_by_reference
            .remove(&stored.integration.reference_id);
        Some(stored.integration)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";

    fn at_millis(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn formats_rfc3339_with_milliseconds() {
        fn check(millis: u64, expected: &str) {
            assert_eq!(
                format_rfc3339_millis(at_millis(millis)),
                expected,
                "{millis} ms"
            );
        }
        check(0, "1970-01-01T00:00:00.000Z");
        // The example in Cloudflare's schema.
        check(1_577_470_279_117, "2019-12-27T18:11:19.117Z");
        check(951_782_400_000, "2000-02-29T00:00:00.000Z");
        check(4_107_628_799_999, "2100-03-01T23:59:59.999Z");
        check(86_399_001, "1970-01-01T23:59:59.001Z");
    }

    #[test]
    fn times_before_the_epoch_are_clamped() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(format_rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn uuid_v4_has_the_version_and_variant_bits() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let id = uuid_v4(&mut rng);
            assert_eq!(id.len(), 36, "{id}");
            let bytes = id.as_bytes();
            for (index, byte) in bytes.iter().enumerate() {
                if matches!(index, 8 | 13 | 18 | 23) {
                    assert_eq!(*byte, b'-', "{id}");
                } else {
                    assert!(matches!(byte, b'0'..=b'9' | b'a'..=b'f'), "{id}");
                }
            }
            assert_eq!(bytes[14], b'4', "{id}");
            assert!(matches!(bytes[19], b'8' | b'9' | b'a' | b'b'), "{id}");
        }
    }

    #[test]
    fn new_integration_fills_every_field() {
        let mut rng = StdRng::seed_from_u64(1);
        let made = new_integration(
            ACCOUNT,
            Some("ref"),
            "https://t.okta.com",
            at_millis(0),
            &mut rng,
        );
        assert_eq!(made.account_tag, ACCOUNT);
        assert!(made.active);
        assert_eq!(made.created_at, "1970-01-01T00:00:00.000Z");
        assert_eq!(made.integration_type, "Okta");
        assert_eq!(made.reference_id, "ref");
        assert_eq!(made.tenant_url, "https://t.okta.com");
        assert_eq!(
            made.well_known_url,
            format!("/.well-known/sse-configuration/{}/", made.id)
        );

        let defaulted =
            new_integration(ACCOUNT, None, "https://t.okta.com", at_millis(0), &mut rng);
        assert_eq!(defaulted.reference_id, defaulted.id);
    }

    fn make(reference_id: &str, rng: &mut StdRng) -> Integration {
        new_integration(
            ACCOUNT,
            Some(reference_id),
            "https://t.okta.com",
            at_millis(0),
            rng,
        )
    }

    #[test]
    fn store_indexes_by_reference_and_id_per_account() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut store = Store::default();
        let first = store.insert(make("a", &mut rng)).unwrap();
        let second = store.insert(make("b", &mut rng)).unwrap();
        assert_eq!(store.insert(make("a", &mut rng)), Err(ReferenceTaken));

        assert_eq!(store.by_reference(ACCOUNT, "a"), Some(&first));
        assert_eq!(store.by_id(ACCOUNT, &second.id), Some(&second));
        assert_eq!(
            store.by_reference("ffffffffffffffffffffffffffffffff", "a"),
            None
        );
        assert_eq!(store.list(ACCOUNT), vec![first.clone(), second.clone()]);

        let updated = store
            .update(
                ACCOUNT,
                &first.id,
                false,
                "https://u.okta.com".into(),
                Some("c".into()),
            )
            .unwrap();
        assert!(!updated.active);
        assert_eq!(store.by_reference(ACCOUNT, "a"), None);
        assert_eq!(store.by_reference(ACCOUNT, "c"), Some(&updated));
        assert_eq!(
            store.update(
                ACCOUNT,
                &first.id,
                true,
                "https://u.okta.com".into(),
                Some("b".into())
            ),
            Err(UpdateError::ReferenceTaken)
        );
        let kept = store
            .update(ACCOUNT, &first.id, true, "https://v.okta.com".into(), None)
            .unwrap();
        assert_eq!(kept.reference_id, "c");
        assert_eq!(
            store.update(ACCOUNT, "missing", true, "https://v.okta.com".into(), None),
            Err(UpdateError::NotFound)
        );

        assert_eq!(store.delete(ACCOUNT, &second.id), Some(second.clone()));
        assert_eq!(store.by_reference(ACCOUNT, "b"), None);
        assert_eq!(store.delete(ACCOUNT, &second.id), None);
    }

    #[test]
    fn upsert_replaces_the_holder_of_the_reference() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut store = Store::default();
        let old = store.upsert_by_reference(make("a", &mut rng));
        let new = store.upsert_by_reference(make("a", &mut rng));
        assert_ne!(old.id, new.id);
        assert_eq!(store.by_id(ACCOUNT, &old.id), None);
        assert_eq!(store.list(ACCOUNT), vec![new]);
    }
}
