//! Command-line flags of how targets are scraped (TLS, auth, connection
//! cap, gzip) and where they come from (file-based discovery), as one clap
//! [`Args`] group that a command flattens in (`#[command(flatten)]`).

use std::path::PathBuf;

use clap::Args;

use crate::http::{BasicAuth, ClientSettings, DEFAULT_MAX_CONNS_PER_HOST, ScrapeAuth, TlsSettings};

/// Scrape flags shared by the commands that scrape.
#[derive(Debug, Clone, Default, Args)]
pub struct ScrapeArgs {
    /// PEM file of the CA certificates trusted for https:// targets
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of a client certificate for https:// targets.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Accept any server certificate (insecure; for test fleets only).
    #[arg(long)]
    pub tls_insecure_skip_verify: bool,
    /// File holding a bearer token sent to every target (re-read when it
    /// changes: a rotated token needs no restart).
    #[arg(long, value_name = "FILE", conflicts_with = "basic_auth_user")]
    pub bearer_token_file: Option<PathBuf>,
    /// User name for HTTP basic auth.
    #[arg(long, value_name = "USER")]
    pub basic_auth_user: Option<String>,
    /// File holding the basic auth password (re-read when it changes).
    #[arg(long, value_name = "FILE", requires = "basic_auth_user")]
    pub basic_auth_password_file: Option<PathBuf>,
    /// Maximum connections open at once to one target host:port (0 = no
    /// cap; the built-in fleet, one server standing in for every host, is
    /// never capped).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNS_PER_HOST)]
    pub max_conns_per_host: usize,
    /// Do not ask targets for gzip-compressed pages.
    #[arg(long)]
    pub no_gzip: bool,
    /// Prometheus file-SD file (JSON or YAML list of `{targets, labels}`),
    /// re-read at each round start when it changed (repeatable).
    #[arg(long = "file-sd", value_name = "FILE")]
    pub file_sd: Vec<PathBuf>,
}

impl ScrapeArgs {
    /// TLS and auth as given by these flags.
    pub fn scrape_auth(&self) -> ScrapeAuth {
        ScrapeAuth {
            tls_config: Some(TlsSettings {
                ca_file: self.tls_ca_file.clone(),
                cert_file: self.tls_cert_file.clone(),
                key_file: self.tls_key_file.clone(),
                insecure_skip_verify: self.tls_insecure_skip_verify,
            }),
            bearer_token_file: self.bearer_token_file.clone(),
            basic_auth: self.basic_auth_user.as_ref().map(|u| BasicAuth {
                username: u.clone(),
                password_file: self.basic_auth_password_file.clone(),
            }),
        }
    }

    /// The client settings these flags describe (clap refuses a bearer
    /// token with basic auth).
    pub fn settings(&self) -> Result<ClientSettings, String> {
        self.scrape_auth()
            .client_settings(self.max_conns_per_host, !self.no_gzip)
            .map_err(|e| e.to_string())
    }

    /// The client settings, checked now (every file readable and valid);
    /// for the built-in fleet, without the per-host cap.
    pub fn checked_settings(&self, builtin: bool) -> Result<ClientSettings, String> {
        let mut s = self.settings()?;
        if builtin {
            s.max_conns_per_host = 0;
        }
        s.check().map_err(|e| e.to_string())?;
        Ok(s)
    }
}
