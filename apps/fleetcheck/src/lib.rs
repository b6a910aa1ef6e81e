//! fleetcheck: scrape a fleet of Prometheus endpoints in rounds, run checks
//! (built-in rule kinds and custom [`checks::Check`] implementations),
//! aggregate anomalies into a mergeable [`report::Report`].
//!
//! The per-host logic ([`state::scrape_round`], [`scan::fetch_page`],
//! [`scan::scrape_host`], [`worker::WorkerState::scrape`]) is plain code
//! independent of where it runs: the in-process baseline
//! ([`scan::scan_inprocess`]) and a process-pool runner share it.
//!
//! The process-pool runner ([`pool`], the default of the binary): each
//! `multiloop` worker builds a [`worker::WorkerState`] from a serde
//! [`worker::WorkerInit`] once (initializer task [`pool::init_worker`]); the
//! task [`pool::scrape`]`(HostSpec, round) -> HostRound` calls
//! [`worker::WorkerState::scrape`]; hosts are routed by `HostSpec::id`; the
//! reducer [`pool::ReportReducer`] folds into a [`Report`]
//! (`Report::default`, [`Report::add`], [`Report::merge`]); after all hosts
//! of a round are merged the parent calls [`Report::finish_round`]
//! (fleet-level checks).
//!
//! A binary that uses [`pool`] needs nothing else: its worker processes are
//! the binary itself, started again, and multiloop turns them into workers
//! before `main` runs.

pub mod alert;
#[cfg(feature = "simulator")]
pub mod anchor;
#[cfg(feature = "simulator")]
pub mod bench;
pub mod checks;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod dur;
pub mod error;
pub mod expfmt;
#[cfg(feature = "simulator")]
pub mod fleet;
pub mod history;
pub mod http;
#[cfg(feature = "simulator")]
pub mod local_cluster;
pub mod malloc;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod report;
pub mod rules;
pub mod scan;
pub mod scrape_args;
pub mod server;
pub mod service;
pub mod state;
pub mod worker;

pub use checks::{Check, Checks};
pub use error::Error;
pub use report::Report;
pub use rules::Rules;
pub use state::{Finding, HostRound, HostState, scrape_round};
