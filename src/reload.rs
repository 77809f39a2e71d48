//! Reloads of the running configuration: one task owns the configuration in force and applies,
//! one at a time, every reload asked for (SIGHUP, a watched secret file changing, `POST /reload`),
//! with the same validation, metric and log lines whoever asked. It re-reads through the loader
//! it is given and applies through [`App::reload`]; it parses no setting and serves no request.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::telemetry::LogControl;
use crate::watch::{watched_files, FileWatch};
use crate::{App, Reloaded};

/// What asked for a reload; its `as_str` starts the reload's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Hangup,
    /// A watched token, admin token or CA file changed.
    FileChange,
    /// An authenticated `POST /reload` on the admin listener.
    AdminRequest,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::AdminRequest => "POST /reload",
        }
    }
}

/// How a reload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new configuration is in force, except for the keys that need a restart.
    Applied {
        applied: Vec<&'static str>,
        needs_restart: Vec<&'static str>,
    },
    /// The new configuration was invalid; the running one stays. The reason names the key and
    /// holds no secret.
    Rejected { reason: String },
}

struct ReloadRequest {
    trigger: Trigger,
    reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// Asks the reload task for a reload. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<ReloadRequest>,
}

/// Reloads waiting at most. A reload re-reads everything, so one already waiting serves any
/// number of later requests: a full queue drops the request without losing a change.
const QUEUED_RELOADS: usize = 4;

/// How long file events are gathered before the files are compared: a rotation writes or swaps
/// several entries in quick succession (Kubernetes: a new directory, a new `..data` link, a
/// rename), and the comparison should see the end of it.
pub const FILE_EVENT_QUIET: Duration = Duration::from_millis(200);

impl ReloadHandle {
    /// Reloads and waits for the outcome; `None` when the reload task has stopped.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        let request = ReloadRequest {
            trigger,
            reply: Some(reply),
        };
        self.requests.send(request).await.ok()?;
        outcome.await.ok()
    }

    /// Asks for a reload without waiting for it (signal handlers and file watchers, which do not
    /// wait). When the queue is full a reload is already due and will read the same files.
    pub fn request(&self, trigger: Trigger) {
        let _ = self.requests.try_send(ReloadRequest {
            trigger,
            reply: None,
        });
    }
}

/// Re-reads the configuration: the same flags, environment and file as at start.
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The reload task's state: the service to apply to, how to re-read, and what is in force.
pub struct Reloader {
    app: App,
    load: Loader,
    running: Config,
    logs: Option<LogControl>,
}

impl Reloader {
    pub fn new(app: App, load: Loader, running: Config, logs: Option<LogControl>) -> Reloader {
        Reloader {
            app,
            load,
            running,
            logs,
        }
    }

    /// Starts the watch on the running configuration's secret files, before it returns (so
    /// that a change after start-up announces itself is seen), and the reload task; the admin
    /// listener's `POST /reload` is connected to it. Abort the task to stop both.
    pub fn start(self) -> (ReloadHandle, JoinHandle<()>) {
        let (sender, requests) = mpsc::channel(QUEUED_RELOADS);
        let handle = ReloadHandle { requests: sender };
        self.app.admin.set_reload_handle(handle.clone());
        let watch = start_watch(&self.running, &handle);
        let task = tokio::spawn(self.run(requests, handle.clone(), watch));
        (handle, task)
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        handle: ReloadHandle,
        mut watch: Option<FileWatch>,
    ) {
        while let Some(request) = requests.recv().await {
            let outcome = match self.reload_once() {
                Ok(Reloaded { plan, config }) => {
                    self.running = config;
                    // A reload may name other files (a new `token_file`): the watch follows the
                    // configuration in force, and does so before the reload is reported, so
                    // that whoever reads the report and then changes the new file is seen.
                    let files = watched_files(&self.running);
                    if watch.as_ref().map(FileWatch::files) != Some(&files[..]) {
                        drop(watch.take());
                        watch = start_watch(&self.running, &handle);
                    }
                    ReloadOutcome::Applied {
                        applied: plan.applied,
                        needs_restart: plan.needs_restart,
                    }
                }
                Err(reason) => ReloadOutcome::Rejected { reason },
            };
            self.report(request.trigger, &outcome);
            if let Some(reply) = request.reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Re-reads the configuration and applies what can change live; nothing changes when the
    /// new configuration is invalid, and the error says why.
    fn reload_once(&self) -> Result<Reloaded, String> {
        let mut new = (self.load)().map_err(|error| error.to_string())?;
        if self.running.dev {
            // --dev points the sidecar at its own simulator; a reload keeps that.
            new.replace_upstream(self.running.upstream.clone(), self.running.token.clone());
        }
        self.app
            .reload(&self.running, new, self.logs.as_ref())
            .map_err(|error| error.to_string())
    }

    /// Counts and logs a reload's outcome, at `warn` like every operational event: a changed
    /// (or refused) configuration is something an operator reading only warnings must see.
    fn report(&self, trigger: Trigger, outcome: &ReloadOutcome) {
        let metrics = self.app.proxy.metrics();
        let trigger = trigger.as_str();
        match outcome {
            ReloadOutcome::Applied {
                applied,
                needs_restart,
            } => {
                metrics.record_reload("applied");
                if !needs_restart.is_empty() {
                    tracing::warn!(trigger, keys = ?needs_restart, "{trigger}: these changes need a restart and were not applied");
                }
                tracing::warn!(trigger, applied = ?applied, "{trigger}: configuration reloaded");
            }
            ReloadOutcome::Rejected { reason } => {
                metrics.record_reload("rejected");
                tracing::warn!(trigger, error = %reason, "{trigger}: configuration rejected; the running one stays");
            }
        }
    }
}

/// Watches the configuration's secret files, asking `handle` for a reload when one changes. A
/// watch that cannot start is logged and left off: SIGHUP and `POST /reload` still work.
fn start_watch(config: &Config, handle: &ReloadHandle) -> Option<FileWatch> {
    let files = watched_files(config);
    if files.is_empty() {
        return None;
    }
    let handle = handle.clone();
    match FileWatch::start(files, FILE_EVENT_QUIET, move || {
        handle.request(Trigger::FileChange)
    }) {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the token, admin token and CA files; they are re-read on SIGHUP and POST /reload only");
            None
        }
    }
}
