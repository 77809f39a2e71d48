//! Fleets for the fleet tier's tests (issue 15): several real sidecar processes, each with its own
//! ephemeral ports, sharing one real `redis-server` (`crates/redis-fixture`), one fleet key file and
//! one simulated Cloudflare API; and reading what Redis holds. It never fakes Redis or the sidecar,
//! and asserts only what its helpers are named for.

use std::path::{Path, PathBuf};

use base64::Engine;
use http::Method;
use nix::sys::signal::Signal;
use rand::RngCore;

use super::client::{Endpoint, Reply};
use super::metrics::{parse_metrics, sample};
use super::process::{tempdir, SidecarProcess};

use redis_fixture::redis;
pub use redis_fixture::RedisServer;

/// Writes a fresh fleet key as an operator makes one (`head -c 32 /dev/urandom | base64`) into a
/// new file and returns its path.
pub fn write_fleet_key() -> PathBuf {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let path = tempdir().join("fleet.key");
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    std::fs::write(&path, format!("{encoded}\n")).expect("write the fleet key");
    path
}

/// One sidecar of a fleet: the real binary, its lookup listener and its admin listener.
pub struct FleetMember {
    pub process: SidecarProcess,
    pub lookup: Endpoint,
    pub admin: Endpoint,
}

impl FleetMember {
    /// Starts the binary in front of `upstream` with `args` and waits for its listening line.
    pub fn start(upstream: &str, args: &[&str]) -> FleetMember {
        let mut process = SidecarProcess::start_in_front_of(upstream, args, &[]);
        let (lookup, admin) = process.listening_addrs();
        FleetMember {
            process,
            lookup: Endpoint::new(lookup),
            admin: Endpoint::new(admin),
        }
    }

    /// A lookup of `reference` in [`ACCOUNT`](super::ACCOUNT) with `token` as the credential.
    pub async fn lookup(&self, reference: &str, token: &str) -> Reply {
        self.lookup.lookup(reference, token).await
    }

    /// The value of one sample of this sidecar's metrics.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let reply = self
            .admin
            .get("/metrics", &[("accept", "application/openmetrics-text")])
            .await;
        sample(&parse_metrics(&reply), name, labels)
    }

    /// A request to this sidecar's admin listener.
    pub async fn admin(&self, method: Method, path: &str) -> Reply {
        self.admin.send(method, path, &[]).await
    }

    /// Kills the process with `SIGKILL`: no drain, no goodbye to Redis, a lease left behind.
    pub fn kill(self) {
        self.process.signal(Signal::SIGKILL);
        // Reaped by the drop; the exit status of a killed process says nothing the test needs.
        drop(self.process);
    }
}

/// A fleet: sidecars sharing one Redis URL, one fleet key file and one fleet size.
pub struct Fleet {
    pub members: Vec<FleetMember>,
    upstream: String,
    args: Vec<String>,
}

impl Fleet {
    /// Starts `size` sidecars in front of `upstream` on `redis` with a new fleet key, its
    /// `fleet_size` set to `size`, and `extra_args` for each.
    pub fn start(upstream: &str, redis: &RedisServer, size: usize, extra_args: &[&str]) -> Fleet {
        Fleet::start_with_key(upstream, &redis.url(), &write_fleet_key(), size, extra_args)
    }

    /// [`Fleet::start`] with a given Redis URL and fleet key file.
    pub fn start_with_key(
        upstream: &str,
        redis_url: &str,
        key_file: &Path,
        size: usize,
        extra_args: &[&str],
    ) -> Fleet {
        let mut args = vec![
            "--redis-url".to_owned(),
            redis_url.to_owned(),
            "--fleet-key-file".to_owned(),
            key_file.to_str().expect("a UTF-8 temp path").to_owned(),
            "--fleet-size".to_owned(),
            size.to_string(),
        ];
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let mut fleet = Fleet {
            members: Vec::new(),
            upstream: upstream.to_owned(),
            args,
        };
        for _ in 0..size {
            fleet.add_member();
        }
        fleet
    }

    /// Starts one more sidecar with the fleet's settings (a new replica, or one restarted) and
    /// returns its index.
    pub fn add_member(&mut self) -> usize {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.members.push(FleetMember::start(&self.upstream, &args));
        self.members.len() - 1
    }

    pub fn member(&self, index: usize) -> &FleetMember {
        &self.members[index]
    }

    /// Removes member `index` and kills it (`SIGKILL`).
    pub fn kill_member(&mut self, index: usize) {
        self.members.remove(index).kill();
    }
}

/// Every key Redis holds, by `SCAN` (as an operator with Redis access would list them).
pub fn redis_keys(connection: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::Commands::scan::<String>(connection)
        .expect("SCAN")
        .map(|key| key.expect("a key"))
        .collect();
    keys.sort();
    keys
}

/// The keys of entries (`ztrs:v1:{fleet}:e:{hash}`) among `keys`.
pub fn entry_keys(keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|key| key.split(':').nth(3) == Some("e"))
        .cloned()
        .collect()
}

/// Everything Redis holds under `key`, read as an operator with Redis access would read it (by
/// its type: a string, a hash's fields and values, a set's or a list's members), concatenated.
pub fn readable_value(connection: &mut redis::Connection, key: &str) -> Vec<u8> {
    let kind: String = redis::cmd("TYPE").arg(key).query(connection).expect("TYPE");
    let parts: Vec<Vec<u8>> = match kind.as_str() {
        "string" => vec![redis::cmd("GET").arg(key).query(connection).expect("GET")],
        "hash" => redis::cmd("HGETALL")
            .arg(key)
            .query(connection)
            .expect("HGETALL"),
        "set" => redis::cmd("SMEMBERS")
            .arg(key)
            .query(connection)
            .expect("SMEMBERS"),
        "list" => redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(connection)
            .expect("LRANGE"),
        "zset" => redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(connection)
            .expect("ZRANGE"),
        // Gone since the SCAN (expired): nothing to read.
        "none" => Vec::new(),
        other => panic!("a key of a type the sidecar does not write: {key} is a {other}"),
    };
    parts.concat()
}
