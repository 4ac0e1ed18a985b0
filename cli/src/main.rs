//! `parley`: the command-line client and `parley dev`, the whole suite in one
//! process. The client commands talk to a running suite (by default the one
//! `make dev` starts): tokens, groups, sending, watching a stream, acks,
//! receipts, unread counts, and `parley demo`, the seeds' scenario.

#![forbid(unsafe_code)]

mod client;
mod cluster;
mod demo;
mod dev;
mod failure;
mod web;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use parley_proto::{message as mpb, receipt as rpb};
use parley_server::Uid;

use crate::{
    client::{Device, Endpoints, show_frame},
    failure::Failure,
};

#[derive(Debug, Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley command-line client and dev suite",
    after_help = "Exit codes: 0 done, 1 failed, 2 bad usage, 3 refused by the suite, \
                  4 not allowed (permission, token), 5 suite unreachable."
)]
struct Cli {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Print each result as one JSON object (for scripts) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all five services on localhost: SQLite under --data, in-process bus and presence.
    Dev {
        /// Where the SQLite files go.
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// The first of the suite's ports: the gateway takes it, the message,
        /// presence, receipt and notification services the next four, the
        /// gateway's WebSocket the one 10 above and the web client 29 above.
        #[arg(long, default_value_t = dev::PORTS)]
        ports: u16,
        /// The built web client to serve (`make web` builds clients/web/dist).
        #[arg(long)]
        web: Option<PathBuf>,
    },
    /// Run the suite in its production shape: each service its own process,
    /// on MariaDB and Redis, two gateways, service credentials; Ctrl-C stops it.
    DevCluster(cluster::Options),
    /// Play the seeds' scenario against a running suite and print what each user sees.
    Demo {
        /// The running `parley dev`'s data directory (its push log is read there).
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Print a fresh set of service credentials as `key=value` lines: each
    /// service's private key (`<name>-service-key`) and the public key list
    /// (`service-public-keys`), the keys the Helm chart's Secret holds
    /// (`kubectl create secret generic parley-credentials --from-env-file=…`).
    Keys {
        /// Callers of your own besides the five services (a backend that
        /// calls Parley's APIs for its users): each gets a key pair too.
        #[arg(long = "extra")]
        extra: Vec<String>,
    },
    /// Print a dev token (HS256) for a user.
    Token {
        /// The user.
        uid: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Create a group; the acting user becomes its admin.
    CreateGroup {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// Group name.
        name: String,
        /// Other members.
        members: Vec<String>,
    },
    /// Add members to a group (admins only).
    AddMembers {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// The group.
        gid: u64,
        /// Users to add.
        members: Vec<String>,
    },
    /// Set what a group's members see of each other's reads, from its next
    /// message on (admins only).
    ReceiptPolicy {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// The group.
        gid: u64,
        /// full (read by k of N, and who), counts, or off.
        policy: Policy,
    },
    /// Hide or show your reads, in every group or in one (hidden reads are
    /// counted nowhere, and you see no one's). Without a choice, prints it.
    ReceiptPrivacy {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// One group (otherwise every group without a choice of its own).
        #[arg(long)]
        group: Option<u64>,
        /// private, shared, or (with --group) follow the choice for every
        /// group.
        privacy: Option<Privacy>,
    },
    /// Send a message through the gateway.
    Send {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// The group.
        gid: u64,
        /// The text.
        text: String,
        /// Do not ask for read receipts.
        #[arg(long)]
        no_receipt: bool,
    },
    /// Hold a stream open and print messages and receipt digests as they arrive.
    Watch {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// The device id.
        #[arg(long, default_value = "cli")]
        device: String,
        /// Ack each message as read (otherwise as delivered).
        #[arg(long)]
        read: bool,
    },
    /// Acknowledge a group up to a seq through the gateway.
    Ack {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// The group.
        gid: u64,
        /// Everything up to this seq.
        seq: u64,
        /// Delivered rather than read.
        #[arg(long)]
        delivered: bool,
    },
    /// Show receipts of messages (their sender or a group admin).
    Receipts {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
        /// The group.
        gid: u64,
        /// Message ids.
        msgids: Vec<u64>,
    },
    /// Show unread counts per group.
    Unread {
        /// Acting user.
        #[arg(long = "as")]
        uid: String,
    },
}

/// A group's receipt policy, as the command line names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Policy {
    Full,
    Counts,
    Off,
}

/// A read privacy choice, as the command line names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Privacy {
    Private,
    Shared,
    Follow,
}

/// A read privacy, as the command line prints it.
fn privacy_line(state: Option<rpb::ReceiptPrivacyState>, gid: u64) -> String {
    let state = state.unwrap_or_default();
    let name = |choice: i32| match rpb::ReceiptPrivacy::try_from(choice) {
        Ok(rpb::ReceiptPrivacy::Private) => "private",
        Ok(rpb::ReceiptPrivacy::Shared) => "shared",
        _ => "follows every group",
    };
    let hidden = if state.private { "hidden" } else { "shown" };
    if gid == 0 {
        format!("reads {hidden} in every group without a choice of its own")
    } else {
        format!(
            "group {gid}: reads {hidden} (this group: {}; every group: {})",
            name(state.group),
            name(state.every_group)
        )
    }
}

fn uid(raw: &str) -> Result<Uid, String> {
    Uid::parse(raw).map_err(|e| format!("{raw:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // With --json, standard error carries the one JSON error and nothing
    // else a script would have to tell apart from it.
    let filter = match (&cli.command, cli.json) {
        (Command::Dev { .. }, _) => "info",
        (_, true) => "off",
        (_, false) => "warn",
    };
    parley_server::telemetry::init_with(
        "parley",
        parley_server::telemetry::LogFormat::Text,
        filter,
    );
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if json {
                eprintln!("{}", failure.json());
            } else {
                eprintln!("parley: {failure}");
            }
            failure.exit_code()
        }
    }
}

/// Prints a result: `text` for people, or `json` with `--json`.
#[derive(Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Text for people.
    pub const TEXT: Self = Self { json: false };

    /// Whether results are JSON.
    pub fn json(self) -> bool {
        self.json
    }

    /// Prints one result.
    pub fn result(self, text: impl FnOnce() -> String, json: serde_json::Value) {
        if self.json {
            println!("{json}");
        } else {
            let text = text();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let endpoints = cli.endpoints;
    let out = Output { json: cli.json };
    match cli.command {
        Command::Dev { data, ports, web } => {
            Ok(dev::run(&data, &dev::Options { ports, web }).await?)
        }
        Command::DevCluster(options) => cluster::run(&options).await,
        Command::Demo { data } => Ok(demo::run(&endpoints, &data).await?),
        Command::Keys { extra } => {
            let mut names = vec!["gateway", "message", "receipt", "presence", "notification"];
            for name in &extra {
                if !parley_server::credentials::valid_service_name(name)
                    || names.contains(&name.as_str())
                {
                    return Err(Failure::other(format!(
                        "--extra {name:?}: a new name of 1 to 32 characters from a-z and '-'"
                    )));
                }
                names.push(name);
            }
            let (private, public) = parley_server::credentials::generate(&names);
            for (name, key) in &private {
                println!("{name}-service-key={}", key.expose());
            }
            println!("service-public-keys={public}");
            Ok(())
        }
        Command::Token { uid: raw, ttl_secs } => {
            let token = parley_gateway::auth::issue_hs256(
                endpoints.secret.as_bytes(),
                &uid(&raw)?,
                ttl_secs,
            )
            .map_err(|e| e.to_string())?;
            out.result(|| token.clone(), serde_json::json!({ "token": token }));
            Ok(())
        }
        Command::CreateGroup {
            uid: raw,
            name,
            members,
        } => {
            let request = mpb::CreateGroupRequest {
                kind: mpb::GroupKind::Group.into(),
                name,
                member_uids: members,
            };
            let reply = client::message(&endpoints, &uid(&raw)?)?
                .create_group(request)
                .await
                .map_err(Failure::status("create group"))?
                .into_inner();
            let group = reply.group.unwrap_or_default();
            out.result(
                || format!("group {} {:?} created", group.gid, group.name),
                serde_json::json!({ "gid": group.gid, "name": group.name }),
            );
            Ok(())
        }
        Command::AddMembers {
            uid: raw,
            gid,
            members,
        } => {
            let request = mpb::AddMembersRequest { gid, uids: members };
            let reply = client::message(&endpoints, &uid(&raw)?)?
                .add_members(request)
                .await
                .map_err(Failure::status("add members"))?
                .into_inner();
            out.result(
                || match reply.added_uids.as_slice() {
                    [] => format!("group {gid}: no one added (all were members)"),
                    added => format!(
                        "group {gid}: added {} from seq {}",
                        added.join(", "),
                        reply.joined_seq
                    ),
                },
                serde_json::json!({
                    "gid": gid,
                    "added": reply.added_uids,
                    "joined_seq": reply.joined_seq,
                }),
            );
            Ok(())
        }
        Command::ReceiptPolicy {
            uid: raw,
            gid,
            policy,
        } => {
            let wire = match policy {
                Policy::Full => mpb::ReceiptPolicy::Full,
                Policy::Counts => mpb::ReceiptPolicy::Counts,
                Policy::Off => mpb::ReceiptPolicy::Off,
            };
            let request = mpb::SetReceiptPolicyRequest {
                gid,
                policy: wire.into(),
            };
            let reply = client::message(&endpoints, &uid(&raw)?)?
                .set_receipt_policy(request)
                .await
                .map_err(Failure::status("set the receipt policy"))?
                .into_inner();
            let name = format!("{policy:?}").to_lowercase();
            out.result(
                || format!("group {gid}: receipts {name} from seq {}", reply.from_seq),
                serde_json::json!({ "gid": gid, "policy": name, "from_seq": reply.from_seq }),
            );
            Ok(())
        }
        Command::ReceiptPrivacy {
            uid: raw,
            group,
            privacy,
        } => {
            let gid = group.unwrap_or(0);
            let mut receipt = client::receipt(&endpoints, &uid(&raw)?)?;
            let state = match privacy {
                None => {
                    let request = rpb::GetReceiptPrivacyRequest { gid };
                    receipt
                        .get_receipt_privacy(request)
                        .await
                        .map_err(Failure::status("read the receipt privacy"))?
                        .into_inner()
                        .state
                }
                Some(choice) => {
                    let wire = match choice {
                        Privacy::Private => rpb::ReceiptPrivacy::Private,
                        Privacy::Shared => rpb::ReceiptPrivacy::Shared,
                        Privacy::Follow => rpb::ReceiptPrivacy::Unspecified,
                    };
                    let request = rpb::SetReceiptPrivacyRequest {
                        gid,
                        privacy: wire.into(),
                    };
                    receipt
                        .set_receipt_privacy(request)
                        .await
                        .map_err(Failure::status("set the receipt privacy"))?
                        .into_inner()
                        .state
                }
            };
            let private = state.as_ref().is_some_and(|state| state.private);
            out.result(
                || privacy_line(state, gid),
                serde_json::json!({ "gid": gid, "private": private }),
            );
            Ok(())
        }
        Command::Send {
            uid: raw,
            gid,
            text,
            no_receipt,
        } => {
            let mut device = Device::connect(&endpoints, &uid(&raw)?, "cli", out).await?;
            let result = device.send(gid, &text, !no_receipt).await?;
            out.result(
                || format!("sent: message {} seq {}", result.msgid, result.seq),
                serde_json::json!({ "gid": gid, "msgid": result.msgid, "seq": result.seq }),
            );
            Ok(())
        }
        Command::Watch {
            uid: raw,
            device,
            read,
        } => {
            let uid = uid(&raw)?;
            let mut stream = Device::connect(&endpoints, &uid, &device, out).await?;
            eprintln!("watching as {uid} (Ctrl-C to stop)");
            loop {
                match stream.next(Duration::from_secs(5)).await? {
                    Some(frame) => {
                        show_frame(&uid, &frame, out);
                        if let parley_proto::gateway::connect_response::Frame::Message(m) = &frame {
                            stream.ack(m.gid, m.seq, read).await?;
                        }
                    }
                    None => stream.heartbeat().await?,
                }
            }
        }
        Command::Ack {
            uid: raw,
            gid,
            seq,
            delivered,
        } => {
            let mut device = Device::connect(&endpoints, &uid(&raw)?, "cli", out).await?;
            device.ack(gid, seq, !delivered).await?;
            device.round_trip().await?;
            out.result(
                || format!("acknowledged group {gid} up to seq {seq}"),
                serde_json::json!({ "gid": gid, "up_to_seq": seq, "read": !delivered }),
            );
            Ok(())
        }
        Command::Receipts {
            uid: raw,
            gid,
            msgids,
        } => demo::print_receipts(&endpoints, &uid(&raw)?, gid, msgids, out).await,
        Command::Unread { uid: raw } => demo::print_unread(&endpoints, &uid(&raw)?, out).await,
    }
}
