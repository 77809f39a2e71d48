//! Property tests (proptest) of the identifier and credential rules, on pure functions only (no
//! sockets, no clock): reference ids survive percent-encoding by a client and re-encoding by the
//! sidecar unchanged; invalid ids never route; and the cache key follows exactly the credential
//! headers, the account and the decoded reference id. Regression cases found by the fuzz targets
//! (fuzz/) live at the end, as plain tests.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use http::header::{HeaderName, HeaderValue};
use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use proptest::prelude::*;
use proptest::test_runner::Config;
use zt_risk_sidecar::cache::CacheKey;
use zt_risk_sidecar::config::{parse_file, resolve, settings_table, Cli};
use zt_risk_sidecar::credentials::{extract, Partition, CREDENTIAL_HEADERS};
use zt_risk_sidecar::error::ApiError;
use zt_risk_sidecar::routes::{route, Lookup, ReferenceId, Route, Subject, MAX_REFERENCE_ID_BYTES};

/// The fuzz targets' model (fuzz/src/lib.rs), compiled here as a module so that `cargo test`
/// checks the same invariants as the fuzzer, from the same code. The fuzz crate itself cannot be
/// a dev-dependency: it is a workspace of its own inside this one, and it links libFuzzer.
#[path = "../../fuzz/src/lib.rs"]
mod fuzz_model;

use fuzz_model::{header_map, is_valid_reference_id, lookup_path, partition_key};

/// Modest case counts keep this file well under a few seconds in a debug build. Failures are not
/// written to proptest-regressions files: proptest prints the minimal case, which belongs in the
/// regression tests at the end of this file.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// What JavaScript's `encodeURIComponent` leaves alone: `A-Z a-z 0-9 - _ . ! ~ * ' ( )`. The
/// TypeScript SDK builds its paths with it.
const ENCODE_URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

fn encode_uri_component(text: &str) -> String {
    utf8_percent_encode(text, ENCODE_URI_COMPONENT).to_string()
}

fn encode_every_byte(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

/// Routes a GET of the lookup by reference id; anything but such a lookup is an error here.
fn route_lookup(account: &str, raw_reference: &str) -> Result<Lookup, ApiError> {
    match route(&Method::GET, &lookup_path(account, raw_reference))? {
        Route::Lookup(lookup) if matches!(lookup.subject, Subject::Reference(_)) => Ok(lookup),
        other => panic!("{raw_reference:?} routed to {other:?}"),
    }
}

fn reference_of(lookup: &Lookup) -> &ReferenceId {
    lookup.reference_id().expect("a lookup by reference id")
}

/// Characters a reference id may hold, biased towards the ones that matter to encoding: URL
/// delimiters, `%`, `+`, dots, spaces, multi-byte UTF-8 and format characters (which are not
/// control characters, so they are valid).
fn id_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        2 => proptest::sample::select(vec![
            '%', '/', '?', '#', '+', '&', '=', ';', '.', ' ', '\\', '"', '<', '>', '[', ']', '{',
            '}', '|', '^', '`', '@', ':', '\'', '*', 'é', '✓', '😀', '\u{200B}', '\u{2028}',
            '\u{FEFF}', '\u{FFFD}', '\u{A0}',
        ]),
        1 => any::<char>().prop_filter("not a control character", |c| !c.is_control()),
    ]
}

/// A valid reference id: non-empty, at most 1024 bytes, no control characters, not `.` or `..`.
fn valid_reference_id() -> impl Strategy<Value = String> {
    let short = proptest::collection::vec(id_char(), 1..48).prop_map(String::from_iter);
    // Near the length bound: a run of one character filled up to 1024 bytes or just under.
    let near_limit = (id_char(), 0usize..8).prop_map(|(c, slack)| {
        let count = (MAX_REFERENCE_ID_BYTES - slack) / c.len_utf8();
        c.to_string().repeat(count)
    });
    prop_oneof![8 => short, 1 => near_limit]
        .prop_filter("valid reference id", |s| is_valid_reference_id(s))
}

fn account_id() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|number| format!("{number:032x}"))
}

/// The forwarded segment is one segment: no `/`, `?`, `#`, space or control character, and every
/// `%` starts a two-hex-digit escape.
fn assert_single_segment(segment: &str) {
    let bytes = segment.as_bytes();
    assert!(!bytes.is_empty());
    for (index, &byte) in bytes.iter().enumerate() {
        assert!(
            byte.is_ascii_graphic() && !b"/?#".contains(&byte),
            "byte {byte:#04x} in {segment:?}"
        );
        if byte == b'%' {
            assert!(
                bytes.get(index + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(index + 2).is_some_and(u8::is_ascii_hexdigit),
                "stray '%' in {segment:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// (a) A client's encoding of a valid id (encodeURIComponent, or every byte escaped) routes to
    /// exactly that id, and the segment the sidecar forwards is one segment that decodes back to it.
    #[test]
    fn encoded_reference_ids_route_to_themselves(
        id in valid_reference_id(),
        account in account_id(),
    ) {
        for encoded in [encode_uri_component(&id), encode_every_byte(&id)] {
            let lookup = route_lookup(&account, &encoded)
                .unwrap_or_else(|error| panic!("{encoded:?} did not route: {error:?}"));
            prop_assert_eq!(reference_of(&lookup).as_str(), id.as_str());
            prop_assert_eq!(lookup.account_id.to_string(), account.as_str());

            let segment = reference_of(&lookup).to_path_segment();
            assert_single_segment(&segment);
            let again = ReferenceId::decode(&segment)
                .unwrap_or_else(|error| panic!("{segment:?} does not decode: {error:?}"));
            prop_assert_eq!(again.as_str(), id.as_str());

            let upstream = lookup.upstream_path();
            prop_assert!(upstream.starts_with("/accounts/"));
            let segments: Vec<&str> = upstream.split('/').skip(1).collect();
            prop_assert_eq!(segments.len(), 6, "{}", upstream);
            prop_assert_eq!(segments[5], segment.as_str());
        }
    }

    /// (b) An id with a control character anywhere never routes, however it is encoded.
    #[test]
    fn control_characters_never_route(
        id in valid_reference_id(),
        control in prop_oneof![
            proptest::char::range('\0', '\u{1F}'),
            Just('\u{7F}'),
            proptest::char::range('\u{80}', '\u{9F}'),
        ],
        position in any::<proptest::sample::Index>(),
        account in account_id(),
    ) {
        let mut chars: Vec<char> = id.chars().collect();
        chars.insert(position.index(chars.len() + 1), control);
        let bad: String = chars.into_iter().collect();
        for encoded in [encode_uri_component(&bad), encode_every_byte(&bad)] {
            let result = route_lookup(&account, &encoded);
            prop_assert!(
                matches!(result, Err(ApiError::InvalidReferenceId { .. })),
                "{encoded:?} gave {result:?}"
            );
        }
    }

    /// (b) An id over 1024 bytes after decoding never routes.
    #[test]
    fn over_long_ids_never_route(
        c in id_char(),
        extra in 1usize..600,
        account in account_id(),
    ) {
        let count = MAX_REFERENCE_ID_BYTES / c.len_utf8() + extra;
        let long = c.to_string().repeat(count);
        prop_assert!(long.len() > MAX_REFERENCE_ID_BYTES);
        for encoded in [encode_uri_component(&long), encode_every_byte(&long)] {
            let result = route_lookup(&account, &encoded);
            prop_assert_eq!(
                result,
                Err(ApiError::InvalidReferenceId { reason: "must be at most 1024 bytes" })
            );
        }
    }

    /// (b) A malformed escape anywhere in an otherwise well-encoded id never routes: `%` must be
    /// followed by two hex digits, and is never decoded leniently.
    #[test]
    fn malformed_escapes_never_route(
        id in valid_reference_id(),
        split in any::<proptest::sample::Index>(),
        bad in prop_oneof![
            // '%' then a non-hex character, or one hex digit then a non-hex character.
            proptest::sample::select(vec!["g", "G", "z", "%", "-", ".", "~", "_", "!", "+", ":"])
                .prop_map(|after| format!("%{after}")),
            (proptest::sample::select(b"0123456789abcdefABCDEF".to_vec()),
             proptest::sample::select(vec!["g", "z", "%", "-", "~"]))
                .prop_map(|(hex, after)| format!("%{}{after}", hex as char)),
        ],
        at_end in prop_oneof![Just(""), Just("%"), Just("%4"), Just("%e")],
        account in account_id(),
    ) {
        let chars: Vec<char> = id.chars().collect();
        let cut = split.index(chars.len() + 1);
        let head: String = chars[..cut].iter().collect();
        let tail: String = chars[cut..].iter().collect();
        // Encoded pieces keep every '%' of their own well-formed, so the only bad escape is ours.
        let encoded = format!("{}{bad}{}{at_end}", encode_uri_component(&head), encode_uri_component(&tail));
        let result = route_lookup(&account, &encoded);
        prop_assert_eq!(
            result,
            Err(ApiError::InvalidReferenceId { reason: "malformed percent-encoding" }),
            "{}", encoded
        );
    }
}

#[test]
fn dot_segments_and_bad_utf8_never_route() {
    let account = "023e105f4ecef8ad9ca31a8372d0c353";
    for raw in [
        ".",
        "..",
        "%2E",
        "%2e",
        "%2E%2E",
        "%2e.",
        ".%2E",
        "%FF",
        "%C0%AF",
        "%ED%A0%80",
        "%E2%82",
        "%80",
    ] {
        let result = route_lookup(account, raw);
        assert!(
            matches!(result, Err(ApiError::InvalidReferenceId { .. })),
            "{raw:?} gave {result:?}"
        );
    }
    assert_eq!(
        route(&Method::GET, &lookup_path(account, "")),
        Err(ApiError::NoRoute)
    );
}

/// A header value as `http::HeaderValue` accepts it: visible ASCII, space, tab and obs-text
/// (0x80–0xFF, not UTF-8 on its own).
fn header_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Arbitrary bytes with the forbidden ones (controls other than tab, and DEL) folded onto
    // letters: cheaper to generate than a union per byte, and half the bytes are obs-text.
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|byte| match byte {
                0x00..=0x08 | 0x0A..=0x1F | 0x7F => b'a' + byte % 26,
                other => other,
            })
            .collect()
    })
}

/// Which of the four credential headers a request sends, and with what value.
type CredentialSet = [Option<Vec<u8>>; 4];

fn credential_set() -> impl Strategy<Value = CredentialSet> {
    let one = || proptest::option::weighted(0.6, header_value_bytes());
    [one(), one(), one(), one()]
}

/// Headers that carry no credential: ones SDKs send, and arbitrary token names.
fn unrelated_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        proptest::sample::select(vec![
            "user-agent".to_owned(),
            "x-stainless-retry-count".to_owned(),
            "api-version".to_owned(),
            "accept".to_owned(),
            "x-auth".to_owned(),
            "authorization-extra".to_owned(),
            "proxy-authorization".to_owned(),
            "cookie".to_owned(),
        ]),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(|bytes| {
            const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
            bytes
                .into_iter()
                .map(|byte| char::from(TOKEN[usize::from(byte) % TOKEN.len()]))
                .collect::<String>()
        }),
    ]
    .prop_filter("not a credential header", |name| {
        !CREDENTIAL_HEADERS.iter().any(|(lower, _)| lower == name)
    });
    proptest::collection::vec((name, header_value_bytes()), 0..8)
}

/// The credential headers of `set` as pairs. `display_case` sends them as SDKs spell them
/// (`X-Auth-Email`); header names are case-insensitive either way.
fn credential_pairs(set: &CredentialSet, display_case: bool) -> Vec<(HeaderName, HeaderValue)> {
    CREDENTIAL_HEADERS
        .iter()
        .zip(set)
        .filter_map(|((lower, display), value)| {
            let value = value.as_ref()?;
            let spelled = if display_case { display } else { lower };
            Some((
                HeaderName::from_bytes(spelled.as_bytes()).expect("valid name"),
                HeaderValue::from_bytes(value).expect("strategy yields valid values"),
            ))
        })
        .collect()
}

fn unrelated_pairs(headers: &[(String, Vec<u8>)]) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_bytes(value).expect("valid value"),
            )
        })
        .collect()
}

fn partition(pairs: &[(HeaderName, HeaderValue)]) -> Result<Partition, ApiError> {
    extract(&header_map(pairs), None, partition_key()).map(|credentials| credentials.partition())
}

fn hash_of(key: &CacheKey) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

proptest! {
    #![proptest_config(config(512))]

    /// (c) The same credential headers give the same partition whatever unrelated headers come
    /// with them and in whatever order the headers arrive.
    #[test]
    fn partition_ignores_unrelated_headers_and_order(
        set in credential_set(),
        first_extras in unrelated_headers(),
        second_extras in unrelated_headers(),
        display_case in any::<bool>(),
        shuffle_seed in any::<u64>(),
    ) {
        let mut first = credential_pairs(&set, false);
        first.extend(unrelated_pairs(&first_extras));
        let mut second = credential_pairs(&set, display_case);
        second.extend(unrelated_pairs(&second_extras));
        // A deterministic shuffle from the seed (a xorshift), so a failure replays exactly.
        let mut state = shuffle_seed | 1;
        for index in (1..second.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            second.swap(index, (state % (index as u64 + 1)) as usize);
        }
        let expected = if set.iter().all(Option::is_none) {
            Err(ApiError::MissingCredentials)
        } else {
            partition(&credential_pairs(&set, false))
        };
        prop_assert!(expected.is_ok() || set.iter().all(Option::is_none));
        prop_assert_eq!(partition(&first), expected.clone());
        prop_assert_eq!(partition(&second), expected);
    }

    /// (c) Any difference in the credential headers (a value, or which headers are present) gives
    /// another partition.
    #[test]
    fn partition_differs_when_any_credential_differs(
        first in credential_set(),
        second in credential_set(),
    ) {
        prop_assume!(first != second);
        prop_assume!(first.iter().any(Option::is_some) && second.iter().any(Option::is_some));
        let one = partition(&credential_pairs(&first, false));
        let other = partition(&credential_pairs(&second, true));
        prop_assert!(one.is_ok() && other.is_ok());
        prop_assert_ne!(one, other);
    }

    /// (c) Changing one byte of one credential value (the narrowest difference) moves the partition.
    #[test]
    fn partition_differs_on_a_one_byte_change(
        set in credential_set(),
        which in any::<proptest::sample::Index>(),
        position in any::<proptest::sample::Index>(),
        replacement in 0x21u8..=0x7E,
    ) {
        let present: Vec<usize> = (0..4).filter(|&index| set[index].is_some()).collect();
        prop_assume!(!present.is_empty());
        let header = present[which.index(present.len())];
        let mut changed = set.clone();
        let value = changed[header].as_mut().expect("present");
        if value.is_empty() {
            value.push(replacement);
        } else {
            let at = position.index(value.len());
            prop_assume!(value[at] != replacement);
            value[at] = replacement;
        }
        prop_assert_ne!(
            partition(&credential_pairs(&set, false)),
            partition(&credential_pairs(&changed, false))
        );
    }

    /// (c) Two lookups share a cache key exactly when they carry the same credential headers, name
    /// the same account and the same reference id after decoding, however the id was encoded.
    #[test]
    fn cache_keys_follow_partition_account_and_decoded_id(
        credentials in [credential_set(), credential_set()],
        accounts in [account_id(), account_id()],
        ids in [valid_reference_id(), valid_reference_id()],
        picks in [(0usize..2, 0usize..2, 0usize..2, any::<bool>()), (0usize..2, 0usize..2, 0usize..2, any::<bool>())],
    ) {
        prop_assume!(credentials.iter().all(|set| set.iter().any(Option::is_some)));
        let key_for = |(credential, account, id, every_byte): (usize, usize, usize, bool)| {
            let encoded = if every_byte {
                encode_every_byte(&ids[id])
            } else {
                encode_uri_component(&ids[id])
            };
            let lookup = route_lookup(&accounts[account], &encoded)
                .unwrap_or_else(|error| panic!("{encoded:?}: {error:?}"));
            let partition = partition(&credential_pairs(&credentials[credential], every_byte))
                .unwrap_or_else(|error| panic!("{error:?}"));
            CacheKey::new(partition, &lookup)
        };
        let (first, second) = (picks[0], picks[1]);
        let same_credentials = credentials[first.0] == credentials[second.0];
        let same_account = accounts[first.1] == accounts[second.1];
        let same_id = ids[first.2] == ids[second.2];
        let (key_one, key_two) = (key_for(first), key_for(second));
        prop_assert_eq!(key_one == key_two, same_credentials && same_account && same_id);
        prop_assert_eq!(key_one.partition == key_two.partition, same_credentials);
        prop_assert_eq!(key_one.account_id == key_two.account_id, same_account);
        prop_assert_eq!(key_one.subject == key_two.subject, same_id);
        if key_one == key_two {
            prop_assert_eq!(hash_of(&key_one), hash_of(&key_two));
        }
    }
}

// The fuzz targets' invariants as properties. Each property builds inputs in a target's own input
// format and hands them to that target's body in the shared model (`fuzz_model::check_*_input`),
// so what the fuzzer asserts also runs in every `cargo test`. The strategies aim at the
// interesting region (near-valid paths, envelopes, header sets, purge queries, settings) rather
// than uniform bytes, which would almost never reach past the first check.

/// The pieces the integrations family's paths are made of, plus near misses.
fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "accounts", "zt_risk_scoring", "integrations", "reference_id", "client", "v4", "", ".",
            "..", "%2F", "Accounts", "integration",
        ])
        .prop_map(str::to_owned),
        2 => account_id(),
        1 => any::<u128>().prop_map(|number| format!("{number:032X}")),
        1 => "[0-9a-f]{31,33}",
        2 => integration_id_text(),
        3 => raw_reference_segment(),
    ]
}

/// A UUID as a caller may spell it: canonical, upper case, without hyphens, or a near miss.
fn integration_id_text() -> impl Strategy<Value = String> {
    (any::<u128>(), 0..4u8).prop_map(|(number, spelling)| {
        let hex = format!("{number:032x}");
        let hyphenated = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        match spelling {
            0 => hyphenated,
            1 => hyphenated.to_uppercase(),
            2 => hex,
            _ => hyphenated[1..].to_owned(),
        }
    })
}

/// A reference id segment as it arrives in a path: still percent-encoded, or with stray `%`,
/// dots, controls and non-ASCII left raw.
fn raw_reference_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        valid_reference_id().prop_map(|id| encode_uri_component(&id)),
        valid_reference_id().prop_map(|id| encode_every_byte(&id)),
        proptest::collection::vec(
            prop_oneof![
                4 => id_char(),
                1 => Just('%'),
                1 => proptest::char::range('0', '9'),
                1 => proptest::sample::select(vec!['a', 'F', 'z', '\u{0}', '\u{7F}', '\n']),
            ],
            0..24
        )
        .prop_map(String::from_iter),
    ]
}

/// A path of the integrations family's shape (collection, item or lookup by reference id), with
/// or without the `/client/v4` prefix, then zero to two segments replaced, dropped or added.
fn family_path() -> impl Strategy<Value = String> {
    let edits = proptest::collection::vec((0usize..9, 0..3u8, path_segment()), 0..3);
    (
        any::<bool>(),
        0..3u8,
        account_id(),
        integration_id_text(),
        raw_reference_segment(),
        edits,
    )
        .prop_map(|(prefixed, shape, account, item, reference, edits)| {
            let mut segments: Vec<String> =
                ["accounts", &account, "zt_risk_scoring", "integrations"]
                    .iter()
                    .map(|segment| (*segment).to_owned())
                    .collect();
            match shape {
                0 => {}
                1 => segments.push(item),
                _ => segments.extend(["reference_id".to_owned(), reference]),
            }
            for (index, edit, segment) in edits {
                let index = index.min(segments.len());
                match edit {
                    0 if index < segments.len() => segments[index] = segment,
                    1 if index < segments.len() => {
                        segments.remove(index);
                    }
                    _ => segments.insert(index, segment),
                }
            }
            let prefix = if prefixed { "/client/v4" } else { "" };
            format!("{prefix}/{}", segments.join("/"))
        })
}

fn method_line() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE",
        "get", "",
    ])
    .prop_map(str::to_owned)
}

/// A JSON value for an envelope field: the right type, a wrong type, or absent (`None`).
fn envelope_field(
    right: BoxedStrategy<serde_json::Value>,
) -> BoxedStrategy<Option<serde_json::Value>> {
    prop_oneof![
        4 => right.prop_map(Some),
        1 => proptest::sample::select(vec![
            serde_json::Value::Null,
            serde_json::json!("true"),
            serde_json::json!(1),
            serde_json::json!({}),
            serde_json::json!([]),
        ])
        .prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

/// An upstream body: an envelope whose fields are each right, wrong or missing; or not JSON.
fn upstream_body() -> impl Strategy<Value = Vec<u8>> {
    let result = prop_oneof![
        Just(serde_json::Value::Null),
        (integration_id_text(), proptest::option::of(valid_reference_id())).prop_map(
            |(id, reference)| serde_json::json!({"id": id, "reference_id": reference, "name": "okta"})
        ),
        Just(serde_json::json!([])),
    ]
    .boxed();
    let envelope = (
        envelope_field(any::<bool>().prop_map(serde_json::Value::Bool).boxed()),
        envelope_field(Just(serde_json::json!([])).boxed()),
        envelope_field(Just(serde_json::json!([{"code": 10000, "message": "x"}])).boxed()),
        envelope_field(result),
    )
        .prop_map(|(success, errors, messages, result)| {
            let mut object = serde_json::Map::new();
            for (name, value) in [
                ("success", success),
                ("errors", errors),
                ("messages", messages),
                ("result", result),
            ] {
                if let Some(value) = value {
                    object.insert(name.to_owned(), value);
                }
            }
            serde_json::to_vec(&object).expect("a JSON map serialises")
        });
    prop_oneof![
        6 => envelope,
        1 => proptest::collection::vec(any::<u8>(), 0..32),
        1 => Just(b"[]".to_vec()),
    ]
}

/// `STATUS\nRETRY-AFTER\nBODY`, the `upstream_answer` target's input.
fn upstream_answer_input() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![
        4 => proptest::sample::select(vec![
            "200", "404", "401", "403", "429", "500", "502", "503", "504", "304", "400", "201",
        ])
        .prop_map(str::to_owned),
        1 => (100u16..1000).prop_map(|code| code.to_string()),
        1 => "[0-9a-z ]{0,4}",
    ];
    let retry_after = prop_oneof![
        3 => (0u64..10_000).prop_map(|secs| secs.to_string()),
        1 => proptest::sample::select(vec![
            "", " 7 ", "-1", "1.5", "18446744073709551616", "Wed, 21 Oct 2015 07:28:00 GMT",
        ])
        .prop_map(str::to_owned),
        1 => header_value_bytes().prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ];
    (status, retry_after, upstream_body()).prop_map(|(status, retry_after, body)| {
        let mut input = format!("{status}\n{retry_after}\n").into_bytes();
        input.extend(body);
        input
    })
}

/// Lines of `name: value` and `@fallback TOKEN`, the `credentials` target's input: credential
/// headers in either spelling, sometimes repeated, among unrelated ones.
fn credentials_input() -> impl Strategy<Value = Vec<u8>> {
    let credential_name = proptest::sample::select(
        CREDENTIAL_HEADERS
            .iter()
            .flat_map(|(lower, display)| [*lower, *display])
            .collect::<Vec<_>>(),
    )
    .prop_map(str::to_owned);
    let line = prop_oneof![
        3 => (credential_name, header_value_bytes()),
        2 => unrelated_headers().prop_map(|headers| headers.into_iter().next().unwrap_or_default()),
        1 => (Just("@fallback".to_owned()), header_value_bytes()),
    ];
    proptest::collection::vec(line, 0..8).prop_map(|lines| {
        let mut input = Vec::new();
        for (name, value) in lines {
            input.extend_from_slice(name.as_bytes());
            input.extend_from_slice(if name == "@fallback" { b" " } else { b": " });
            input.extend(value);
            input.push(b'\n');
        }
        input
    })
}

/// An admin purge query: `all`, `account_id`, `reference_id` and `integration_id` pairs with
/// valid, encoded and broken values, in any order, sometimes repeated.
fn purge_query() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        1 => proptest::sample::select(vec!["all=true", "all=false", "all", "unknown=1", ""])
            .prop_map(str::to_owned),
        3 => account_id().prop_map(|account| format!("account_id={account}")),
        1 => "[0-9A-Fa-f]{30,33}".prop_map(|account| format!("account_id={account}")),
        3 => raw_reference_segment().prop_map(|reference| format!("reference_id={reference}")),
        1 => integration_id_text().prop_map(|id| format!("integration_id={id}")),
    ];
    proptest::collection::vec(pair, 0..4).prop_map(|pairs| pairs.join("&"))
}

/// A configuration file: settings from the table with plausible, extreme or mistyped values,
/// sometimes an unknown key or broken TOML.
fn config_text() -> impl Strategy<Value = String> {
    let keys: Vec<&'static str> = settings_table().iter().map(|setting| setting.key).collect();
    let value = proptest::sample::select(vec![
        "\"1s\"",
        "\"0s\"",
        "\"250ms\"",
        "\"300000000000years\"",
        "\"1000000years\"",
        "\"5m\"",
        "\"1 MiB\"",
        "\"64KiB\"",
        "0",
        "1",
        "65535",
        "16777216",
        "18446744073709551615",
        "-1",
        "true",
        "\"webpki\"",
        "\"system\"",
        "\"json\"",
        "\"debug\"",
        "\"127.0.0.1:0\"",
        "\"unix:/tmp/zt.sock\"",
        "\"0660\"",
        "\"https://api.cloudflare.com/client/v4\"",
        "\"http://user:secret-password@proxy:3128\"",
        "[\"023e105f4ecef8ad9ca31a8372d0c353\"]",
        "\"\"",
        "[]",
    ]);
    let line = prop_oneof![
        8 => (proptest::sample::select(keys), value)
            .prop_map(|(key, value)| format!("{key} = {value}")),
        1 => proptest::sample::select(vec!["unknown_key = 1", "\"=", "= 1", "[table]", "cache_ttl"])
            .prop_map(str::to_owned),
    ];
    proptest::collection::vec(line, 0..6).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(config(256))]

    /// fuzz/route: the route/405 model (shape → 404, method → 405 with `Allow`, account → 400,
    /// then the id) and the forwarded upstream path, for near-valid paths and methods.
    #[test]
    fn route_model_holds(method in method_line(), path in family_path()) {
        fuzz_model::check_route_input(format!("{method}\n{path}").as_bytes());
    }

    /// fuzz/reference_id: decoding, the forwarded segment and the round trip, with the segment
    /// used both raw and as a decoded id.
    #[test]
    fn reference_id_model_holds(segment in raw_reference_segment()) {
        fuzz_model::check_reference_id_input(segment.as_bytes());
    }

    /// fuzz/upstream_answer: storability, refresh failures, `fresh_for`, the integration a body
    /// names and the 429 cool-down, against the README's caching rules.
    #[test]
    fn upstream_answer_model_holds(input in upstream_answer_input()) {
        fuzz_model::check_upstream_answer_input(&input);
    }

    /// fuzz/credentials: partitions, repeated headers, forwarded headers marked sensitive and
    /// absent from `Debug`, and the request-head bounds.
    #[test]
    fn credentials_model_holds(input in credentials_input()) {
        fuzz_model::check_credentials_input(&input);
    }

    /// fuzz/purge_scope: a lookup purge decodes its reference id as the lookup path does, and
    /// matches that lookup's cache key.
    #[test]
    fn purge_scope_model_holds(query in purge_query()) {
        fuzz_model::check_purge_scope_input(query.as_bytes());
    }

    /// fuzz/config: errors name a key; an accepted configuration's deadlines, timers, breaker
    /// and budget can be computed without a panic.
    #[test]
    fn config_model_holds(text in config_text()) {
        fuzz_model::check_config_input(text.as_bytes());
    }
}

// Regression cases found by the fuzz targets in fuzz/ follow; each asserts the correct behaviour.

/// fuzz/config found that `"=` (a quote, then `=`) is reported against an empty key:
/// "configuration error in ``: …". Every configuration error must name a key (or `config`).
#[test]
fn config_errors_always_name_a_key() {
    for text in ["\"=", "\" =", "\"\" = 1", "=", "= 1", "cache_ttl"] {
        let error = parse_file(text).expect_err(text);
        assert!(!error.key.trim().is_empty(), "{text:?}: {error:?}");
    }
}

/// fuzz/config found durations that the configuration accepts but the running sidecar cannot
/// use, because it adds them to an `Instant` (which panics past about 292 billion years):
/// `request_timeout` and `breaker_cool_down` make every lookup a 500 (proxy.rs `fetch`,
/// resilience.rs `on_result`); `idle_timeout` and `header_read_timeout` make every connection
/// close without an answer (server.rs `idle_for`, hyper's header timer). A budget refill
/// interval (`upstream_budget_period` / `upstream_budget_requests`) over 584 years panics inside
/// governor at start. The README says a bad value stops the start with a message naming the key
/// (exit code 2); so must these.
#[test]
fn durations_the_sidecar_cannot_use_are_refused_by_name() {
    for (key, value) in [
        ("request_timeout", "300000000000years"),
        ("breaker_cool_down", "300000000000years"),
        ("idle_timeout", "300000000000years"),
        ("header_read_timeout", "300000000000years"),
        ("upstream_budget_period", "1000000years"),
    ] {
        let text = format!("{key} = \"{value}\"");
        let file = parse_file(&text).unwrap_or_else(|error| panic!("{text}: {error}"));
        let result = resolve(&Cli::default(), file, None);
        assert_eq!(
            result.map(|_| ()).map_err(|error| error.key),
            Err(key.to_owned()),
            "{text}"
        );
    }
}
