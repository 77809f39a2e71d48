//! `--dev` mode: starts the simulated Cloudflare API (the `cloudflare-sim` crate) in-process on a
//! loopback port, seeds it, points the configuration at it and prints ready-to-paste commands.
//! Nothing here runs unless `--dev` is given, and nothing here is compiled without the `dev`
//! feature, so production builds carry no simulator code.

use std::fmt::Write as _;

use cloudflare_sim::{DevSeed, SimConfig, SimControl, SimulatedCloudflare};

use crate::config::Config;
use crate::credentials::Secret;
use crate::upstream::{UpstreamBase, UpstreamUrlError};

/// Why `--dev` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("could not start the simulated Cloudflare API: {0}")]
    Simulator(std::io::Error),
    #[error("could not start the simulator's control API: {0}")]
    Control(std::io::Error),
    #[error("the simulator's address is not a usable upstream: {0}")]
    Upstream(#[from] UpstreamUrlError),
}

/// The running simulator and what it was seeded with.
pub struct DevMode {
    simulator: SimulatedCloudflare,
    control: SimControl,
    seed: DevSeed,
}

impl DevMode {
    /// Starts the simulator and rewrites `config` to use it, with its dev token as the sidecar's
    /// own token so that plain `curl` needs no credentials.
    pub async fn start(config: &mut Config) -> Result<DevMode, DevError> {
        let simulator = SimulatedCloudflare::start(SimConfig::default())
            .await
            .map_err(DevError::Simulator)?;
        let seed = simulator.handle().seed_dev();
        let control = SimControl::start(simulator.handle())
            .await
            .map_err(DevError::Control)?;
        let upstream = UpstreamBase::parse(&simulator.base_url(), false)?;
        config.replace_upstream(upstream, Some(Secret::new(seed.token.clone())));
        Ok(DevMode {
            simulator,
            control,
            seed,
        })
    }

    pub fn simulator(&self) -> &SimulatedCloudflare {
        &self.simulator
    }

    /// The simulator's control API (faults, rate limit, counters, seeding); see
    /// `cloudflare_sim::SimControl`.
    pub fn control_url(&self) -> String {
        self.control.url()
    }

    /// Ready-to-paste instructions for a sidecar listening on `listen` (as `Listener::describe`
    /// puts it: `127.0.0.1:14480` or `unix:/path`).
    pub fn instructions(&self, listen: &str) -> String {
        let (curl, base) = match listen.strip_prefix("unix:") {
            Some(path) => (
                format!("curl --unix-socket {path} -i"),
                "http://localhost/client/v4".to_owned(),
            ),
            None => ("curl -i".to_owned(), format!("http://{listen}/client/v4")),
        };
        let account = &self.seed.account_id;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "zt-risk-sidecar --dev: simulated Cloudflare API at {}",
            self.simulator.base_url()
        );
        let _ = writeln!(text, "Simulator control: {}", self.control.url());
        let _ = writeln!(text, "Point Cloudflare's SDKs at the sidecar with:");
        let _ = writeln!(text, "  export CLOUDFLARE_BASE_URL={base}");
        let _ = writeln!(text, "  export CLOUDFLARE_API_TOKEN={}", self.seed.token);
        let _ = writeln!(
            text,
            "Try (run a line twice: the second answer is a cache hit, see Cache-Status):"
        );
        for integration in &self.seed.integrations {
            let segment = crate::routes::ReferenceId::decode(
                &percent_encoding::utf8_percent_encode(
                    &integration.reference_id,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string(),
            )
            .map(|id| id.to_path_segment())
            .unwrap_or_default();
            let _ = writeln!(
                text,
                "  {curl} {base}/accounts/{account}/zt_risk_scoring/integrations/reference_id/{segment}"
            );
        }
        let _ = writeln!(
            text,
            "  {curl} {base}/accounts/{account}/zt_risk_scoring/integrations/reference_id/does-not-exist"
        );
        let _ = writeln!(
            text,
            "  {curl} -H 'Authorization: Bearer wrong-token' {base}/accounts/{account}/zt_risk_scoring/integrations/reference_id/does-not-exist"
        );
        text
    }

    pub async fn shutdown(self) {
        self.control.shutdown().await;
        self.simulator.shutdown().await;
    }
}
