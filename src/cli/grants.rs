//! `grants list` and `grants revoke`.

use std::collections::HashMap;

use serde::Serialize;

use super::table::{iso8601, opt, Table};
use super::{plural, to_json, Admin, CliError, Report};
use crate::store::{decode, ClientRecord, GrantRecord, Namespace, Records, StoreResult};

/// Which grants: all of them, narrowed by user and client.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// An email (compared without case) or a sub (compared exactly).
    pub(crate) user: Option<String>,
    pub(crate) client: Option<String>,
}

impl Filter {
    pub(crate) fn new(user: Option<String>, client: Option<String>) -> Filter {
        Filter { user, client }
    }

    pub(crate) fn matches(&self, grant: &GrantRecord) -> bool {
        let user_ok = self.user.as_deref().is_none_or(|user| {
            grant.sub == user
                || grant
                    .email
                    .as_deref()
                    .is_some_and(|email| email.to_lowercase() == user.to_lowercase())
        });
        let client_ok = self
            .client
            .as_deref()
            .is_none_or(|client| grant.client_id == client);
        user_ok && client_ok
    }

    fn is_everything(&self) -> bool {
        self.user.is_none() && self.client.is_none()
    }
}

/// `grants revoke --json`; the field names are the interface.
#[derive(Serialize)]
struct RevokeResult<'a> {
    count: usize,
    revoked: &'a [&'a str],
    not_found: &'a [String],
}

pub(crate) enum Selector {
    Ids(Vec<String>),
    Matching(Filter),
}

/// One grant as the commands show it; the field names are the JSON interface.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GrantRow {
    pub(crate) grant_id: String,
    pub(crate) user: String,
    pub(crate) sub: String,
    pub(crate) email: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_name: Option<String>,
    pub(crate) created_at: Option<String>,
    pub(crate) refresh_token_live: bool,
    pub(crate) resource: Option<String>,
    pub(crate) scope: Option<String>,
}

impl GrantRow {
    fn new(grant: &GrantRecord, client_names: &HashMap<String, Option<String>>) -> GrantRow {
        GrantRow {
            grant_id: grant.grant_id.clone(),
            user: grant.email.clone().unwrap_or_else(|| grant.sub.clone()),
            sub: grant.sub.clone(),
            email: grant.email.clone(),
            client_id: grant.client_id.clone(),
            client_name: client_names.get(&grant.client_id).cloned().flatten(),
            created_at: iso8601(grant.created_at),
            refresh_token_live: grant.refresh_current.is_some(),
            resource: grant.resource.clone(),
            scope: grant.scope.clone(),
        }
    }
}

pub(crate) fn table(rows: &[GrantRow]) -> Table {
    let mut t = Table::new(&[
        "GRANT",
        "USER",
        "SUB",
        "CLIENT",
        "CLIENT NAME",
        "CREATED",
        "REFRESH",
        "RESOURCE",
        "SCOPE",
    ]);
    for r in rows {
        t.row(vec![
            r.grant_id.clone(),
            r.user.clone(),
            r.sub.clone(),
            r.client_id.clone(),
            opt(r.client_name.as_deref()),
            opt(r.created_at.as_deref()),
            if r.refresh_token_live { "live" } else { "none" }.into(),
            opt(r.resource.as_deref()),
            opt(r.scope.as_deref()),
        ]);
    }
    t
}

/// Every live grant the filter matches, newest first. A record that does
/// not decode is skipped with a warning.
pub(crate) async fn matching(
    records: &Records,
    filter: &Filter,
    warnings: &mut Vec<String>,
) -> StoreResult<Vec<GrantRecord>> {
    let mut grants = Vec::new();
    for (key, bytes) in records.store.list(Namespace::Grant).await? {
        match decode::<GrantRecord>(&bytes) {
            Ok(grant) if filter.matches(&grant) => grants.push(grant),
            Ok(_) => {}
            Err(e) => warnings.push(format!("grant {key}: unreadable record skipped ({e})")),
        }
    }
    grants.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.grant_id.cmp(&b.grant_id))
    });
    Ok(grants)
}

/// Every registered client's name, by client id.
pub(crate) async fn client_names(
    records: &Records,
    warnings: &mut Vec<String>,
) -> StoreResult<HashMap<String, Option<String>>> {
    let mut names = HashMap::new();
    for (key, bytes) in records.store.list(Namespace::Client).await? {
        match decode::<ClientRecord>(&bytes) {
            Ok(client) => {
                names.insert(client.client_id, client.client_name);
            }
            Err(e) => warnings.push(format!("client {key}: unreadable record skipped ({e})")),
        }
    }
    Ok(names)
}

pub(crate) async fn list(admin: &Admin, filter: &Filter) -> Result<Report, CliError> {
    let mut warnings = Vec::new();
    let grants = matching(&admin.records, filter, &mut warnings).await?;
    let names = client_names(&admin.records, &mut warnings).await?;
    let rows: Vec<GrantRow> = grants.iter().map(|g| GrantRow::new(g, &names)).collect();
    let text = if rows.is_empty() && !filter.is_everything() {
        "no grant matches\n".to_string()
    } else if rows.is_empty() {
        "no grants\n".to_string()
    } else {
        table(&rows).render()
    };
    Ok(Report {
        text,
        json: to_json(&rows),
        warnings,
        ..Report::default()
    })
}

pub(crate) async fn revoke(admin: &Admin, selector: Selector) -> Result<Report, CliError> {
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    let mut not_found = Vec::new();
    let targets: Vec<GrantRecord> = match selector {
        Selector::Ids(ids) => {
            let mut found = Vec::new();
            for id in dedup(ids) {
                match admin
                    .records
                    .get::<GrantRecord>(Namespace::Grant, &id)
                    .await
                {
                    Ok(Some(grant)) => found.push(grant),
                    Ok(None) => {
                        errors.push(format!("grant {id}: no such grant"));
                        not_found.push(id);
                    }
                    // Unreadable, yet still revocable: deleting needs no decoding.
                    Err(crate::store::StoreError::Corrupt(e)) => {
                        warnings.push(format!("grant {id}: unreadable record ({e})"));
                        found.push(unreadable(&id));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            found
        }
        Selector::Matching(filter) => matching(&admin.records, &filter, &mut warnings).await?,
    };
    let names = client_names(&admin.records, &mut warnings).await?;
    let mut revoked = Vec::new();
    for grant in &targets {
        admin.grants.revoke_grant(&grant.grant_id).await?;
        revoked.push(GrantRow::new(grant, &names));
    }
    let mut text = format!("revoked {}\n", plural(revoked.len(), "grant"));
    if !revoked.is_empty() {
        text.push_str(&table(&revoked).render());
    }
    let ids: Vec<&str> = revoked.iter().map(|r| r.grant_id.as_str()).collect();
    Ok(Report {
        text,
        json: to_json(&RevokeResult {
            count: revoked.len(),
            revoked: &ids,
            not_found: &not_found,
        }),
        errors,
        warnings,
        revoked_grants: ids.iter().map(|id| id.to_string()).collect(),
    })
}

/// A grant known only by its id.
fn unreadable(id: &str) -> GrantRecord {
    GrantRecord {
        grant_id: id.to_string(),
        client_id: String::new(),
        sub: String::new(),
        email: None,
        scope: None,
        resource: None,
        created_at: 0,
        refresh_current: None,
        refresh_previous: None,
        rotated_at: 0,
        validated_at: 0,
        sealed: Vec::new(),
    }
}

/// The ids in the order given, each once.
pub(super) fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(sub: &str, email: Option<&str>, client: &str) -> GrantRecord {
        GrantRecord {
            client_id: client.into(),
            sub: sub.into(),
            email: email.map(str::to_string),
            ..unreadable("g")
        }
    }

    #[test]
    fn user_matches_email_without_case_or_sub_exactly() {
        let g = grant("Sub-1", Some("Alice@Example.com"), "c1");
        let by = |user: &str| Filter::new(Some(user.into()), None).matches(&g);
        assert!(by("alice@example.COM"));
        assert!(by("Sub-1"));
        assert!(!by("sub-1"));
        assert!(!by("alice"));
        assert!(Filter::new(Some("Sub-1".into()), Some("c1".into())).matches(&g));
        assert!(!Filter::new(Some("Sub-1".into()), Some("c2".into())).matches(&g));
        assert!(Filter::default().matches(&g));
        assert!(!Filter::new(Some("x".into()), None).matches(&grant("x2", None, "c1")));
    }
}
