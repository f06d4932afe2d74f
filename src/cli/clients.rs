//! `clients list` and `clients delete`.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::grants::{self, dedup, Filter};
use super::table::{iso8601, opt, Table};
use super::{plural, to_json, Admin, CliError, Report};
use crate::store::{decode, ClientRecord, ConsentRecord, Namespace};

/// One client as the commands show it; the field names are the JSON
/// interface. Never the secret hash.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientRow {
    pub(crate) client_id: String,
    pub(crate) client_name: Option<String>,
    pub(crate) token_endpoint_auth_method: String,
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) grant_types: Vec<String>,
    pub(crate) registered_at: Option<String>,
    pub(crate) last_used_at: Option<String>,
    pub(crate) grants: usize,
    /// `configured` (`[[clients]]`), `document` (a client metadata
    /// document) or `registered` (dynamic registration).
    pub(crate) source: &'static str,
}

/// `clients delete --json`; the field names are the interface.
#[derive(Serialize)]
struct DeleteResult<'a> {
    deleted: &'a [String],
    not_found: &'a [String],
    revoked_grants: &'a [String],
    removed_consents: usize,
}

pub(crate) async fn list(admin: &Admin) -> Result<Report, CliError> {
    let mut warnings = Vec::new();
    let mut clients = Vec::new();
    for (key, bytes) in admin.records.store.list(Namespace::Client).await? {
        match decode::<ClientRecord>(&bytes) {
            Ok(client) => clients.push(client),
            Err(e) => warnings.push(format!("client {key}: unreadable record skipped ({e})")),
        }
    }
    clients.extend(admin.configured_clients.iter().cloned());
    clients.sort_by(|a, b| {
        b.client_id_issued_at
            .cmp(&a.client_id_issued_at)
            .then_with(|| a.client_id.cmp(&b.client_id))
    });
    let mut grant_counts: HashMap<String, usize> = HashMap::new();
    for grant in grants::matching(&admin.records, &Filter::default(), &mut warnings).await? {
        *grant_counts.entry(grant.client_id).or_default() += 1;
    }
    let rows: Vec<ClientRow> = clients
        .into_iter()
        .map(|c| ClientRow {
            grants: grant_counts.get(&c.client_id).copied().unwrap_or(0),
            source: if c.is_configured() {
                "configured"
            } else if c.metadata.contains_key(crate::oauth::cimd::FROM_DOCUMENT) {
                "document"
            } else {
                "registered"
            },
            registered_at: (!c.is_configured())
                .then(|| iso8601(c.client_id_issued_at))
                .flatten(),
            last_used_at: (!c.is_configured())
                .then(|| iso8601(c.last_used_at))
                .flatten(),
            client_id: c.client_id,
            client_name: c.client_name,
            token_endpoint_auth_method: c.token_endpoint_auth_method,
            redirect_uris: c.redirect_uris,
            grant_types: c.grant_types,
        })
        .collect();
    let text = if rows.is_empty() {
        "no clients\n".to_string()
    } else {
        let mut t = Table::new(&[
            "CLIENT",
            "NAME",
            "AUTH",
            "GRANTS",
            "REGISTERED",
            "LAST USED",
            "REDIRECT URIS",
        ]);
        for r in &rows {
            t.row(vec![
                r.client_id.clone(),
                opt(r.client_name.as_deref()),
                r.token_endpoint_auth_method.clone(),
                r.grants.to_string(),
                match r.source {
                    "configured" => "(configured)".to_string(),
                    _ => opt(r.registered_at.as_deref()),
                },
                opt(r.last_used_at.as_deref()),
                r.redirect_uris.join(" "),
            ]);
        }
        t.render()
    };
    Ok(Report {
        text,
        json: to_json(&rows),
        warnings,
        ..Report::default()
    })
}

/// Deletes each registration first (so no new login or token request of the
/// client succeeds), then revokes its grants and forgets its consents. Grants
/// of a named client whose registration is already gone are revoked too.
pub(crate) async fn delete(admin: &Admin, client_ids: &[String]) -> Result<Report, CliError> {
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    let mut deleted = Vec::new();
    let mut not_found = Vec::new();
    let ids = dedup(client_ids.to_vec());
    for id in &ids {
        if admin.configured_clients.iter().any(|c| &c.client_id == id) {
            errors.push(format!(
                "client {id}: registered in the configuration ([[clients]]); remove it there"
            ));
            continue;
        }
        if admin.records.delete(Namespace::Client, id).await? {
            deleted.push(id.clone());
        } else {
            errors.push(format!("client {id}: no such client"));
            not_found.push(id.clone());
        }
    }
    let named: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut revoked = Vec::new();
    for grant in grants::matching(&admin.records, &Filter::default(), &mut warnings).await? {
        if named.contains(grant.client_id.as_str()) {
            admin.grants.revoke_grant(&grant.grant_id).await?;
            revoked.push(grant.grant_id);
        }
    }
    let mut removed_consents = 0usize;
    for (key, bytes) in admin.records.store.list(Namespace::Consent).await? {
        match decode::<ConsentRecord>(&bytes) {
            Ok(consent) if named.contains(consent.client_id.as_str()) => {
                if admin.records.delete(Namespace::Consent, &key).await? {
                    removed_consents += 1;
                }
            }
            Ok(_) => {}
            Err(e) => warnings.push(format!("consent {key}: unreadable record skipped ({e})")),
        }
    }
    let mut text = format!(
        "deleted {}, revoked {}, removed {}\n",
        plural(deleted.len(), "client"),
        plural(revoked.len(), "grant"),
        plural(removed_consents, "consent"),
    );
    for id in &deleted {
        text.push_str(&format!("  client {}\n", super::table::cell(id)));
    }
    for id in &revoked {
        text.push_str(&format!("  grant  {}\n", super::table::cell(id)));
    }
    Ok(Report {
        text,
        json: to_json(&DeleteResult {
            deleted: &deleted,
            not_found: &not_found,
            revoked_grants: &revoked,
            removed_consents,
        }),
        errors,
        warnings,
        revoked_grants: revoked,
    })
}
