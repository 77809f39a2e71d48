//! Reload as a pure diff: which keys changed between the running and the re-read configuration,
//! split by the table's reload column, and the configuration to run with afterwards (restart-only
//! keys keep their running values). It applies nothing itself; `App::reload` does.

use super::declare::Reload;
use super::validate::{self, Secrets};
use super::{Config, ConfigError};

/// What changed between two configurations, as reload sees it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Keys whose new values take effect now.
    pub applied: Vec<&'static str>,
    /// Keys whose new values need a restart (listen addresses, upstream, cache size, ...).
    pub needs_restart: Vec<&'static str>,
}

/// Pure: which keys changed, split into those a reload applies and those that need a restart.
/// Besides the settings, the two tokens count as keys (`token`, `admin_token`): their files can
/// change under an unchanged setting, and the sidecar's token can come from the environment.
/// So can the extra CA file, whose new content is applied like a new path: new connections to
/// Cloudflare verify against the new roots.
pub fn plan_reload(running: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for (key, reload) in new.settings.changed_since(&running.settings) {
        match reload {
            Reload::Live => plan.applied.push(key),
            Reload::Restart => plan.needs_restart.push(key),
        }
    }
    if running.token != new.token {
        plan.applied.push("token");
    }
    if running.admin_token != new.admin_token {
        plan.applied.push("admin_token");
    }
    if running.extra_ca != new.extra_ca && !plan.applied.contains(&"tls_extra_ca_file") {
        plan.applied.push("tls_extra_ca_file");
    }
    plan
}

impl Config {
    /// The configuration to run with after a reload: this (new) one, except that every setting
    /// only a restart changes keeps `running`'s value. The rules between settings are checked
    /// again on the mix, so that a reload never runs a combination neither file allowed (say, a
    /// kept public admin address without the admin token that the new file dropped).
    pub fn keeping_restart_values(self, running: &Config) -> Result<Config, ConfigError> {
        let mut settings = self.settings;
        settings.keep_restart_values(&running.settings);
        // The fleet's secrets are read at start only, like every restart-only value.
        let running_fleet = running.fleet.as_ref();
        let secrets = Secrets {
            token: self.token,
            admin_token: self.admin_token,
            extra_ca: self.extra_ca,
            redis_password: running_fleet.and_then(|fleet| fleet.redis_password.clone()),
            fleet_key: running_fleet.map(|fleet| fleet.fleet_key.clone()),
        };
        validate::build(settings, secrets, self.dev)
    }
}
