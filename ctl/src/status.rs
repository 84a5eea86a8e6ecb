//! `weftctl status`: the control plane and every connected agent and gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use weft_proto::discovery::v1::{ClientKind, StatusRequest, StatusResponse};

use crate::{
    CtlError,
    connect::ControlArgs,
    render::{Format, format_value, to_value},
};

pub async fn status(control: &ControlArgs, format: Format) -> Result<String, CtlError> {
    let mut client = control.connect().await?;
    let status = client.status(StatusRequest {}).await?.into_inner();
    match format {
        Format::Table => Ok(table(&status, &control.url(), now_ms())),
        Format::Json | Format::Yaml => format_value(
            &to_value(&status, "weft.discovery.v1.StatusResponse", true)?,
            format,
        ),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A short human duration: `42s`, `5m3s`, `2h10m`, `3d4h`.
pub fn ago(since_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(since_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn kind(k: ClientKind) -> &'static str {
    match k {
        ClientKind::Agent => "agent",
        ClientKind::Gateway => "gateway",
        ClientKind::Ctl => "ctl",
        ClientKind::Unspecified => "?",
    }
}

/// The resource type's short name, e.g. `Workload` for `RESOURCE_TYPE_WORKLOAD`.
fn type_name(t: weft_proto::discovery::v1::ResourceType) -> String {
    let name = t.as_str_name().trim_start_matches("RESOURCE_TYPE_");
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_string() + &c.as_str().to_lowercase())
                .unwrap_or_default()
        })
        .collect()
}

pub fn table(status: &StatusResponse, url: &str, now: u64) -> String {
    let mut out = format!(
        "control plane {} at {url}, up {}\nconfiguration version {} (accepted {} ago) from {}\n",
        status.server_version,
        ago(status.started_at_unix_ms, now),
        status.config_version,
        ago(status.config_loaded_at_unix_ms, now),
        status.config_source,
    );
    if status.last_reload_rejected {
        out.push_str("last reload REJECTED; the version above stays in force:\n");
    } else if !status.config_problems.is_empty() {
        out.push_str("warnings:\n");
    }
    for p in &status.config_problems {
        out.push_str("  ");
        out.push_str(p);
        out.push('\n');
    }
    if status.clients.is_empty() {
        out.push_str("no clients connected\n");
        return out;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "KIND",
        "NAME",
        "NODE",
        "VERSION",
        "CONNECTED",
        "ACKED (sent)",
        "LAST NACK",
    ]);
    for c in &status.clients {
        let acked: Vec<String> = c
            .types
            .iter()
            .map(|t| {
                let mut s = format!("{} {}", type_name(t.resource_type()), t.last_acked_version);
                if t.last_sent_version != t.last_acked_version {
                    s.push_str(&format!(" ({})", t.last_sent_version));
                }
                s
            })
            .collect();
        let nacks: Vec<String> = c
            .types
            .iter()
            .filter_map(|t| {
                t.last_nack.as_ref().map(|n| {
                    format!(
                        "{} v{} {}: {}",
                        type_name(t.resource_type()),
                        n.version,
                        n.resource_name,
                        n.reason
                    )
                })
            })
            .collect();
        table.add_row([
            kind(c.kind()).to_string(),
            c.name.clone(),
            c.node.clone(),
            c.client_version.clone(),
            ago(c.connected_at_unix_ms, now),
            acked.join("\n"),
            if nacks.is_empty() {
                "-".to_string()
            } else {
                nacks.join("\n")
            },
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::discovery::v1::{ClientStatus, NackRecord, ResourceType, TypeStatus};

    #[test]
    fn renders_clients_with_versions_and_nacks() {
        let status = StatusResponse {
            server_version: "0.1.0".into(),
            started_at_unix_ms: 0,
            config_version: 4,
            config_loaded_at_unix_ms: 50_000,
            config_source: "directory /etc/weft".into(),
            clients: vec![ClientStatus {
                kind: ClientKind::Agent.into(),
                name: "agent-a".into(),
                node: "node-1".into(),
                client_version: "0.1.0".into(),
                connected_at_unix_ms: 0,
                types: vec![
                    TypeStatus {
                        resource_type: ResourceType::Workload.into(),
                        last_sent_version: 4,
                        last_acked_version: 4,
                        last_nack: None,
                    },
                    TypeStatus {
                        resource_type: ResourceType::ApiRoute.into(),
                        last_sent_version: 4,
                        last_acked_version: 3,
                        last_nack: Some(NackRecord {
                            version: 4,
                            resource_name: "edge/api".into(),
                            reason: "bad".into(),
                            at_unix_ms: 0,
                        }),
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = table(&status, "https://cp:15012", 3_725_000);
        assert!(out.contains("up 1h2m"), "{out}");
        assert!(
            out.contains("configuration version 4 (accepted 1h1m ago)"),
            "{out}"
        );
        assert!(out.contains("Workload 4"), "{out}");
        assert!(out.contains("ApiRoute 3 (4)"), "{out}");
        assert!(out.contains("ApiRoute v4 edge/api: bad"), "{out}");
    }
}
