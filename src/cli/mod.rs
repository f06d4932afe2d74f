//! Administration commands (`grants list|revoke`, `clients list|delete`),
//! run against whichever store the configuration names, through the `Store`
//! trait only.
//!
//! Output is an aligned plain-text table, or with `--json` one JSON value
//! whose field names are part of the interface. Secrets never appear: no
//! client secret hashes, wrapped keys, sealed grant data or token hashes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};

use crate::config::{self, Settings};
use crate::crypto::Keys;
use crate::grants::{Grants, Lifetimes};
use crate::session::Revocation;
use crate::store::{Records, SharedStore, StoreError};

pub(crate) mod clients;
pub(crate) mod grants;
pub mod policy_replay;
pub(crate) mod table;

/// Options every administration command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// TOML configuration file (environment variables override it), the one
    /// the proxy runs with: it names the store.
    #[arg(long, short, env = "MCP_PROXY_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print JSON (fields below) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

const GRANT_FIELDS: &str = "\
JSON (--json): an array, newest first, of objects with
  grant_id            string
  user                string   email, else sub
  sub                 string
  email               string|null
  client_id           string
  client_name         string|null  null when the client has no name or is gone
  created_at          string   UTC ISO-8601, e.g. 2025-01-31T12:00:00Z
  refresh_token_live  bool     a refresh token of the grant can still be used
  resource            string|null
  scope               string|null";

const REVOKE_FIELDS: &str = "\
A revoked grant's refresh tokens fail at once; a proxy that already holds one
of its access tokens in memory trusts it for at most auth.cache_ttl more.

Exit status: 0 when every named grant was revoked (or none matched --user /
--client), 1 when a named grant does not exist (the others are still revoked)
or the store fails, 2 for a usage error such as no selector.

JSON (--json): an object
  count      number    grants revoked
  revoked    [string]  their grant ids
  not_found  [string]  named grant ids that do not exist";

const CLIENT_FIELDS: &str = "\
JSON (--json): an array, newest first, of objects with
  client_id                   string
  client_name                 string|null
  token_endpoint_auth_method  string   none, client_secret_basic, client_secret_post
  redirect_uris               [string]
  grant_types                 [string]
  registered_at               string|null  UTC ISO-8601
  last_used_at                string|null  UTC ISO-8601 (updated at most hourly)
  grants                      number   live grants of the client";

const DELETE_FIELDS: &str = "\
Deletes each registration, revokes every grant of the client and forgets the
consents given to it. The application must register again to sign anyone in.

Exit status: 0 when every named client was deleted, 1 when one does not exist
(the others are still deleted) or the store fails.

JSON (--json): an object
  deleted           [string]  client ids deleted
  not_found         [string]  named client ids that do not exist
  revoked_grants    [string]  grant ids revoked
  removed_consents  number    remembered consents removed";

/// `mcp-oauth-proxy grants …`: the subcommands, as parsed; run one with
/// [`grants_main`].
#[derive(Debug, Clone, Subcommand)]
pub enum GrantsCommand {
    /// List grants: who authorized which client, and when.
    #[command(after_help = GRANT_FIELDS)]
    List(GrantsListArgs),
    /// Revoke grants: every access and refresh token of each stops working.
    #[command(after_help = REVOKE_FIELDS)]
    Revoke(GrantsRevokeArgs),
}

/// The options of `grants list`.
#[derive(Debug, Clone, Args)]
pub struct GrantsListArgs {
    /// Only this user's grants: an email (any case) or a sub (exact).
    #[arg(long, value_name = "EMAIL|SUB", allow_hyphen_values = true)]
    pub(crate) user: Option<String>,
    /// Only the grants of this client.
    #[arg(long, value_name = "CLIENT_ID", allow_hyphen_values = true)]
    pub(crate) client: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// The options of `grants revoke`: grant ids, or `--user` and/or `--client`
/// (at least one of them).
#[derive(Debug, Clone, Args)]
#[command(
    group(ArgGroup::new("selector").required(true).multiple(true).args(["grant_ids", "user", "client"])),
    override_usage = "mcp-oauth-proxy grants revoke [OPTIONS] <GRANT_ID>...\n       \
                      mcp-oauth-proxy grants revoke [OPTIONS] --user <EMAIL|SUB> [--client <CLIENT_ID>]\n       \
                      mcp-oauth-proxy grants revoke [OPTIONS] --client <CLIENT_ID>",
)]
pub struct GrantsRevokeArgs {
    /// Grant ids (from `grants list`); put ids that start with "-" after "--".
    #[arg(value_name = "GRANT_ID", conflicts_with_all = ["user", "client"])]
    pub(crate) grant_ids: Vec<String>,
    /// Every grant of this user: an email (any case) or a sub (exact).
    #[arg(long, value_name = "EMAIL|SUB", allow_hyphen_values = true)]
    pub(crate) user: Option<String>,
    /// Every grant of this client (with --user: that user's grants of it).
    #[arg(long, value_name = "CLIENT_ID", allow_hyphen_values = true)]
    pub(crate) client: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `mcp-oauth-proxy clients …`: the subcommands, as parsed; run one with
/// [`clients_main`].
#[derive(Debug, Clone, Subcommand)]
pub enum ClientsCommand {
    /// List registered clients.
    #[command(after_help = CLIENT_FIELDS)]
    List(ClientsListArgs),
    /// Delete client registrations and revoke their grants.
    #[command(after_help = DELETE_FIELDS)]
    Delete(ClientsDeleteArgs),
}

/// The options of `clients list`.
#[derive(Debug, Clone, Args)]
pub struct ClientsListArgs {
    #[command(flatten)]
    pub(crate) common: Common,
}

/// The options of `clients delete`: the client ids.
#[derive(Debug, Clone, Args)]
pub struct ClientsDeleteArgs {
    /// Client ids (from `clients list`); put ids that start with "-" after "--".
    #[arg(value_name = "CLIENT_ID", required = true)]
    pub(crate) client_ids: Vec<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// The store, typed, and the grant operations of the running proxy.
pub(crate) struct Admin {
    pub(crate) records: Records,
    pub(crate) grants: Grants,
    /// `[[clients]]`, which live in the configuration, not the store.
    pub(crate) configured_clients: Vec<crate::store::ClientRecord>,
}

impl Admin {
    /// Builds the same `Grants` the proxy builds, so a revocation here goes
    /// through `Grants::revoke_grant` exactly as one on a request path.
    pub(crate) fn new(store: SharedStore, settings: &Settings) -> Admin {
        let records = Records::new(store);
        let grants = Grants::new(
            records.clone(),
            Keys::new(settings.encryption_key),
            Lifetimes::from_settings(settings),
        );
        let configured_clients = settings
            .clients
            .iter()
            .map(crate::store::ClientRecord::configured)
            .collect();
        Admin {
            records,
            grants,
            configured_clients,
        }
    }
}

/// What a command produced: printed as a table or as JSON.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) text: String,
    /// The `--json` output: pretty JSON, fields in declaration order.
    pub(crate) json: String,
    /// Printed on stderr; the exit status is 1 when there is any.
    pub(crate) errors: Vec<String>,
    /// Printed on stderr.
    pub(crate) warnings: Vec<String>,
    /// Grants revoked, to announce to running replicas.
    pub(crate) revoked_grants: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Runs a `grants` command against the configured store and prints its
/// report; the exit status is 1 when anything failed (see `REVOKE_FIELDS`).
pub fn grants_main(command: GrantsCommand) -> ExitCode {
    match command {
        GrantsCommand::List(args) => run(&args.common.clone(), move |admin| async move {
            grants::list(&admin, &grants::Filter::new(args.user, args.client)).await
        }),
        GrantsCommand::Revoke(args) => run(&args.common.clone(), move |admin| async move {
            let selector = if args.grant_ids.is_empty() {
                grants::Selector::Matching(grants::Filter::new(args.user, args.client))
            } else {
                grants::Selector::Ids(args.grant_ids)
            };
            grants::revoke(&admin, selector).await
        }),
    }
}

/// Runs a `clients` command against the configured store and prints its
/// report; the exit status is 1 when anything failed (see `DELETE_FIELDS`).
pub fn clients_main(command: ClientsCommand) -> ExitCode {
    match command {
        ClientsCommand::List(args) => {
            run(
                &args.common,
                |admin| async move { clients::list(&admin).await },
            )
        }
        ClientsCommand::Delete(args) => run(&args.common.clone(), move |admin| async move {
            clients::delete(&admin, &args.client_ids).await
        }),
    }
}

/// Loads the configuration as `check` does, opens the store, runs `command`
/// and prints its report.
fn run<F, Fut>(common: &Common, command: F) -> ExitCode
where
    F: FnOnce(Admin) -> Fut,
    Fut: std::future::Future<Output = Result<Report, CliError>>,
{
    let config = match config::load(common.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let store = open_store(&settings).await?;
        let mut report = command(Admin::new(store, &settings))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = announce(&settings, &report.revoked_grants).await {
            report.warnings.push(format!(
                "the grants are revoked in the store, but running proxies were not told ({e}); \
                 they may accept access tokens they already cached for up to auth.cache_ttl"
            ));
        }
        Ok::<_, String>(report)
    });
    match result {
        Ok(report) => print_report(&report, common.json),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The store the proxy uses, answering. An SQLite file that does not exist
/// is an error, not a new empty store: it usually means another working
/// directory or configuration than the proxy's. Errors name the setting.
async fn open_store(settings: &Settings) -> Result<SharedStore, String> {
    let config = &settings.config.store;
    let setting = match &config.redis_url {
        Some(_) => "store.redis_url",
        None => "store.path",
    };
    if config.redis_url.is_none() && !config.path.exists() {
        return Err(format!(
            "store.path: {} does not exist (is this the configuration, and the working directory, the proxy runs with?)",
            config.path.display()
        ));
    }
    let store =
        crate::store::open(config).map_err(|e| format!("{setting}: cannot open the store: {e}"))?;
    store
        .ping()
        .await
        .map_err(|e| format!("{setting}: the store does not answer: {e}"))?;
    Ok(store)
}

/// With Redis, replicas tell each other about revocations so their token
/// caches drop the grant at once; tell them about these too.
async fn announce(settings: &Settings, grant_ids: &[String]) -> Result<(), String> {
    let config = &settings.config.store;
    let Some(url) = &config.redis_url else {
        return Ok(());
    };
    if grant_ids.is_empty() {
        return Ok(());
    }
    let client = crate::store::redis::client(url.expose()).map_err(|e| e.to_string())?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    for id in grant_ids {
        let revocation = Revocation::Grant(id.clone());
        crate::auth::revocations::publish(&mut connection, &config.redis_prefix, &revocation)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn print_report(report: &Report, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", report.json)
    } else {
        out.write_all(report.text.as_bytes())
    }
    .and_then(|()| out.flush());
    drop(out);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    match written {
        // A reader that went away (`| head`) is not a failure of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("cannot write the output: {e}");
            ExitCode::FAILURE
        }
        _ if !report.errors.is_empty() => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// Pretty JSON of a value made of strings, numbers, lists and structs.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// "1 grant", "2 grants".
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
