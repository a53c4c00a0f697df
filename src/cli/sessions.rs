//! `sessiond sessions ...`: listing a user's sessions or every session,
//! as a table or JSON, and revoking them.
//!
//! This file must never print a token.

use std::process::ExitCode;

use clap::Subcommand;
use tonic::Code;

use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;

use super::client::{Client, Connection, from_status};
use super::output::{json_time, rfc3339};
use super::{Outcome, exit};

/// `sessiond sessions ...`
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions with their creation, expiry and last activity times
    /// and their devices: a user's (newest first), or without --user every
    /// user's (an admin key's call).
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions of this tenant (with --user, public unless given;
        /// without, every tenant unless given).
        #[arg(long)]
        tenant: Option<String>,
        /// Every tenant (what listing without --user does anyway).
        #[arg(long)]
        all_tenants: bool,
        /// Show at most N sessions, and say when there are more (0: show all).
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke sessions by handle, or every session of a user.
    Revoke {
        /// Session handles.
        #[arg(required_unless_present = "user")]
        handles: Vec<String>,
        /// Revoke every session of this user instead.
        #[arg(long, conflicts_with = "handles")]
        user: Option<String>,
        /// The user's tenant.
        #[arg(long, default_value = "public")]
        tenant: String,
        /// In every tenant.
        #[arg(long)]
        all_tenants: bool,
    },
}

/// `sessiond sessions ...`
pub async fn sessions(command: SessionsCommand, conn: &Connection) -> ExitCode {
    exit(run_sessions(command, conn).await)
}

pub(super) async fn run_sessions(command: SessionsCommand, conn: &Connection) -> Outcome {
    let client = Client::connect(conn).await?;
    let mut sessions = client.sessions();
    match command {
        SessionsCommand::List {
            user,
            tenant,
            all_tenants,
            limit,
            json,
        } => {
            let mut out = SessionTable::new(json, limit);
            match user {
                Some(user) => {
                    list_user_sessions(&client, user, tenant, all_tenants, &mut out).await?
                }
                None => {
                    let tenant = if all_tenants { None } else { tenant };
                    list_all_sessions(&client, tenant, &mut out).await?
                }
            }
            out.finish();
            Ok(())
        }
        SessionsCommand::Revoke {
            handles,
            user,
            tenant,
            all_tenants,
        } => {
            let (revoked, count) = match user {
                Some(user_id) => {
                    let r = sessions
                        .revoke_all_sessions_for_user(client.request(
                            pb::RevokeAllSessionsForUserRequest {
                                user_id,
                                tenant_id: tenant,
                                revoke_across_all_tenants: all_tenants,
                            },
                        ))
                        .await
                        .map_err(from_status)?
                        .into_inner();
                    (r.session_handles_revoked, r.revoked_count)
                }
                None => {
                    let revoked = sessions
                        .revoke_multiple_sessions(client.request(
                            pb::RevokeMultipleSessionsRequest {
                                session_handles: handles,
                            },
                        ))
                        .await
                        .map_err(from_status)?
                        .into_inner()
                        .session_handles_revoked;
                    let count = revoked.len() as u64;
                    (revoked, count)
                }
            };
            for handle in &revoked {
                println!("{handle}");
            }
            eprintln!(
                "revoked {}",
                crate::text::count(count, "session", "sessions")
            );
            if count > revoked.len() as u64 {
                eprintln!("(the first {} listed)", revoked.len());
            }
            Ok(())
        }
    }
}

/// One row of `sessions list`.
pub(super) struct Row<'a> {
    pub(super) handle: &'a str,
    pub(super) user_id: &'a str,
    pub(super) tenant_id: &'a str,
    pub(super) created: Option<&'a prost_types::Timestamp>,
    pub(super) expiry: Option<&'a prost_types::Timestamp>,
    pub(super) last_active: Option<&'a prost_types::Timestamp>,
    pub(super) device: Option<&'a pb::Device>,
}

/// How a device reads in the table: its label, else its user agent (cut
/// short), then its IP address in brackets; `-` when nothing is known.
fn device_text(device: Option<&pb::Device>) -> String {
    const MOST: usize = 40;
    let Some(d) = device else {
        return "-".to_owned();
    };
    let mut name: String = if d.label.is_empty() {
        d.user_agent.chars().take(MOST).collect()
    } else {
        d.label.clone()
    };
    if !d.ip_address.is_empty() {
        if !name.is_empty() {
            name.push(' ');
        }
        name.push_str(&format!("[{}]", d.ip_address));
    }
    if name.is_empty() {
        "-".to_owned()
    } else {
        name
    }
}

/// The rows `sessions list` prints: a table or JSON lines, up to a limit.
pub(super) struct SessionTable {
    pub(super) json: bool,
    /// Most rows to print; 0 for no limit.
    pub(super) limit: usize,
    pub(super) shown: usize,
    /// True once a session past the limit is known to exist.
    pub(super) more: bool,
}

impl SessionTable {
    pub(super) fn new(json: bool, limit: usize) -> Self {
        if !json {
            println!(
                "{:<36}  {:<20}  {:<16}  {:<20}  {:<20}  {:<20}  DEVICE",
                "HANDLE", "USER", "TENANT", "CREATED", "EXPIRES", "LAST ACTIVE"
            );
        }
        Self {
            json,
            limit,
            shown: 0,
            more: false,
        }
    }

    /// Rows still to print before the limit (`usize::MAX` without one).
    pub(super) fn room(&self) -> usize {
        match self.limit {
            0 => usize::MAX,
            limit => limit.saturating_sub(self.shown),
        }
    }

    pub(super) fn row(&mut self, r: Row<'_>) {
        if self.room() == 0 {
            self.more = true;
            return;
        }
        self.shown += 1;
        if self.json {
            let device = r.device.map(|d| {
                serde_json::json!({
                    "ip_address": d.ip_address,
                    "user_agent": d.user_agent,
                    "label": d.label,
                })
            });
            let line = serde_json::json!({
                "session_handle": r.handle,
                "user_id": r.user_id,
                "tenant_id": r.tenant_id,
                "created": json_time(r.created),
                "expires": json_time(r.expiry),
                "last_active": json_time(r.last_active),
                "device": device,
            });
            println!("{line}");
        } else {
            println!(
                "{:<36}  {:<20}  {:<16}  {:<20}  {:<20}  {:<20}  {}",
                r.handle,
                r.user_id,
                r.tenant_id,
                rfc3339(r.created),
                rfc3339(r.expiry),
                rfc3339(r.last_active),
                device_text(r.device)
            );
        }
    }

    /// The token of the page to fetch next, if any: none when the server
    /// set none (it does only when more sessions follow), or when the
    /// limit is reached (more then exist).
    pub(super) fn next_page(&mut self, token: String) -> Option<String> {
        if token.is_empty() {
            return None;
        }
        if self.room() == 0 {
            self.more = true;
            return None;
        }
        Some(token)
    }

    /// Says on stderr when sessions were left out.
    pub(super) fn finish(self) {
        if self.more {
            eprintln!(
                "showing {}; more exist (raise --limit, or --limit 0 for all)",
                crate::text::count(self.shown as u64, "session", "sessions")
            );
        }
    }
}

/// A user's sessions, newest first: in one tenant through ListSessions
/// (device and last activity included), in every tenant through the
/// user's handles and each session's information.
pub(super) async fn list_user_sessions(
    client: &Client,
    user_id: String,
    tenant: Option<String>,
    all_tenants: bool,
    out: &mut SessionTable,
) -> Outcome {
    if !all_tenants {
        return list_user_tenant_sessions(client, user_id, tenant.unwrap_or_default(), out).await;
    }
    let mut sessions = client.sessions();
    let mut page_token = String::new();
    loop {
        let page = sessions
            .get_all_session_handles_for_user(client.request(
                pb::GetAllSessionHandlesForUserRequest {
                    user_id: user_id.clone(),
                    tenant_id: String::new(),
                    fetch_across_all_tenants: true,
                    page_size: out.room().min(10_000) as u32,
                    page_token,
                },
            ))
            .await
            .map_err(from_status)?
            .into_inner();
        for handle in page.session_handles {
            if out.room() == 0 {
                // Known to exist a moment ago; not worth a call to confirm.
                out.more = true;
                return Ok(());
            }
            let info = match sessions
                .get_session_information(client.request(pb::GetSessionInformationRequest {
                    session_handle: handle,
                }))
                .await
            {
                Ok(info) => info.into_inner(),
                // Revoked or expired between the two calls.
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => return Err(from_status(s)),
            };
            out.row(Row {
                handle: &info.session_handle,
                user_id: &info.user_id,
                tenant_id: &info.tenant_id,
                created: info.time_created.as_ref(),
                expiry: info.expiry.as_ref(),
                last_active: info.last_active_time.as_ref(),
                device: info.device.as_ref(),
            });
        }
        match out.next_page(page.next_page_token) {
            Some(next) => page_token = next,
            None => return Ok(()),
        }
    }
}

/// A user's sessions in one tenant, page by page.
async fn list_user_tenant_sessions(
    client: &Client,
    user_id: String,
    tenant_id: String,
    out: &mut SessionTable,
) -> Outcome {
    let mut sessions = client.sessions();
    let mut page_token = String::new();
    loop {
        let page = sessions
            .list_sessions(client.request(pb::ListSessionsRequest {
                user_id: user_id.clone(),
                tenant_id: tenant_id.clone(),
                page_size: out.room().min(500) as u32,
                page_token,
            }))
            .await
            .map_err(from_status)?
            .into_inner();
        for s in &page.sessions {
            out.row(Row {
                handle: &s.session_handle,
                user_id: &user_id,
                tenant_id: &s.tenant_id,
                created: s.time_created.as_ref(),
                expiry: s.expiry.as_ref(),
                last_active: s.last_active_time.as_ref(),
                device: s.device.as_ref(),
            });
        }
        match out.next_page(page.next_page_token) {
            Some(next) => page_token = next,
            None => return Ok(()),
        }
    }
}

/// Every user's sessions (of one tenant when given), page by page.
pub(super) async fn list_all_sessions(
    client: &Client,
    tenant_id: Option<String>,
    out: &mut SessionTable,
) -> Outcome {
    const MOST_PER_PAGE: usize = crate::api::admin::MAX_PAGE_SIZE;
    let mut admin = AdminServiceClient::new(client.channel.clone());
    let mut page_token = String::new();
    loop {
        // At least 1: the loop stops once the limit is reached.
        let page_size = out.room().min(MOST_PER_PAGE);
        let page = admin
            .list_all_sessions(client.request(pb::ListAllSessionsRequest {
                tenant_id: tenant_id.clone(),
                page_size: page_size as i32,
                page_token,
            }))
            .await
            .map_err(from_status)?
            .into_inner();
        for s in &page.sessions {
            out.row(Row {
                handle: &s.session_handle,
                user_id: &s.user_id,
                tenant_id: &s.tenant_id,
                created: s.time_created.as_ref(),
                expiry: s.expiry.as_ref(),
                last_active: s.last_active_time.as_ref(),
                device: s.device.as_ref(),
            });
        }
        match out.next_page(page.next_page_token) {
            Some(next) => page_token = next,
            None => return Ok(()),
        }
    }
}
