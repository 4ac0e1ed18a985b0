//! Starting the suite in-process and talking to it as a given user.

use std::{net::SocketAddr, time::Duration};

use parley_proto::{
    message::message_service_client::MessageServiceClient,
    receipt::{self as rpb, receipt_service_client::ReceiptServiceClient},
};
use parley_testkit::TestDb;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    codegen::InterceptedService,
    metadata::AsciiMetadataValue,
    service::Interceptor,
    transport::{Channel, Endpoint},
};

/// Which storage backend the services run on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    MariaDb,
    Sqlite,
}

/// Sets the caller identity metadata the gateway would set.
#[derive(Clone)]
pub enum As {
    User(AsciiMetadataValue),
    Nobody,
    Raw(&'static str, &'static str),
}

impl Interceptor for As {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self {
            As::User(uid) => {
                request.metadata_mut().insert("x-parley-uid", uid.clone());
            }
            As::Nobody => {}
            As::Raw(key, value) => {
                request
                    .metadata_mut()
                    .insert(*key, AsciiMetadataValue::from_static(value));
            }
        }
        Ok(request)
    }
}

pub fn user(uid: &str) -> As {
    As::User(AsciiMetadataValue::try_from(uid).expect("ascii uid"))
}

pub type MessageClient = MessageServiceClient<InterceptedService<Channel, As>>;
pub type ReceiptClient = ReceiptServiceClient<InterceptedService<Channel, As>>;

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("service stops within 10 s")
            .expect("service task");
    }
}

/// The message and receipt services, each on its own fresh database.
pub struct Suite {
    pub receipt_addr: SocketAddr,
    receipt_db: TestDb,
    _message_db: TestDb,
    message: Option<Running>,
    receipt: Option<Running>,
    channels: (Channel, Channel),
}

async fn database(backend: Backend) -> TestDb {
    match backend {
        Backend::MariaDb => TestDb::mysql().await,
        Backend::Sqlite => TestDb::sqlite(),
    }
}

const GENEROUS_LIMITS: [&str; 4] = [
    "--rate-limit-per-second",
    "100000",
    "--rate-limit-burst",
    "100000",
];

fn start_receipt(listener: TcpListener, db: &TestDb) -> Running {
    let mut args = vec!["parley-receipt", "--database-url", db.url()];
    args.extend(GENEROUS_LIMITS);
    let config = <parley_receipt::Cli as clap::Parser>::try_parse_from(args)
        .expect("receipt config")
        .config;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        parley_receipt::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("receipt service runs");
    });
    Running { stop, task }
}

impl Suite {
    pub async fn start(backend: Backend) -> Self {
        let receipt_db = database(backend).await;
        let message_db = database(backend).await;
        let receipt_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let receipt_addr = receipt_listener.local_addr().expect("addr");
        let receipt = start_receipt(receipt_listener, &receipt_db);

        let message_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let message_addr = message_listener.local_addr().expect("addr");
        let receipt_url = format!("http://{receipt_addr}");
        let mut args = vec![
            "parley-message",
            "--database-url",
            message_db.url(),
            "--receipt-url",
            &receipt_url,
            "--outbox-max-backoff-ms",
            "100",
        ];
        args.extend(GENEROUS_LIMITS);
        let config = <parley_message::Cli as clap::Parser>::try_parse_from(args)
            .expect("message config")
            .config;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            parley_message::run(config, message_listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("message service runs");
        });
        let channel = |addr: SocketAddr| {
            Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_lazy()
        };
        Self {
            receipt_addr,
            receipt_db,
            _message_db: message_db,
            message: Some(Running { stop, task }),
            receipt: Some(receipt),
            channels: (channel(message_addr), channel(receipt_addr)),
        }
    }

    pub fn message(&self, caller: As) -> MessageClient {
        MessageServiceClient::with_interceptor(self.channels.0.clone(), caller)
    }

    pub fn receipt(&self, caller: As) -> ReceiptClient {
        ReceiptServiceClient::with_interceptor(self.channels.1.clone(), caller)
    }

    /// Stops the receipt service; its database stays.
    pub async fn stop_receipt(&mut self) {
        if let Some(running) = self.receipt.take() {
            running.stop().await;
        }
    }

    /// Starts the receipt service again, on the same address and database.
    pub async fn restart_receipt(&mut self) {
        let listener = TcpListener::bind(self.receipt_addr)
            .await
            .expect("rebind the receipt address");
        self.receipt = Some(start_receipt(listener, &self.receipt_db));
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.message.take() {
            running.stop().await;
        }
        self.stop_receipt().await;
    }
}

/// Creates a group as `creator` with `members` and returns its gid.
pub async fn create_group(suite: &Suite, creator: &str, name: &str, members: &[&str]) -> u64 {
    let request = parley_proto::message::CreateGroupRequest {
        kind: parley_proto::message::GroupKind::Group.into(),
        name: name.into(),
        member_uids: members.iter().map(|m| m.to_string()).collect(),
    };
    let created = suite
        .message(user(creator))
        .create_group(request)
        .await
        .expect("create group");
    created.into_inner().group.expect("group").gid
}

/// Acknowledges, as `uid`, everything up to `up_to` as read.
pub async fn ack_read(suite: &Suite, uid: &str, gid: u64, up_to: u64) -> rpb::AckResponse {
    let request = rpb::AckRequest {
        gid,
        up_to_seq: up_to,
        kind: rpb::AckKind::Read.into(),
    };
    suite
        .receipt(user(uid))
        .ack(request)
        .await
        .expect("ack")
        .into_inner()
}

fn get_receipts_request(gid: u64, msgids: Vec<u64>, page: u32) -> rpb::GetReceiptsRequest {
    rpb::GetReceiptsRequest {
        gid,
        msgids,
        list_page_size: page,
    }
}

/// The receipts of A's messages, as A (the sender in every scenario).
pub async fn receipts(
    suite: &Suite,
    gid: u64,
    msgids: Vec<u64>,
    page: u32,
) -> Vec<rpb::MessageReceipt> {
    let request = get_receipts_request(gid, msgids, page);
    suite
        .receipt(user("A"))
        .get_receipts(request)
        .await
        .expect("receipts")
        .into_inner()
        .receipts
}

/// Waits until the receipt service has recorded every one of A's `msgids`
/// (the outbox delivers them asynchronously) and returns their receipts.
pub async fn wait_for_receipts(
    suite: &Suite,
    gid: u64,
    msgids: Vec<u64>,
    page: u32,
) -> Vec<rpb::MessageReceipt> {
    let client = suite.receipt(user("A"));
    parley_testkit::eventually(
        "the receipt service to record the messages",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let request = get_receipts_request(gid, msgids.clone(), page);
            async move {
                client
                    .get_receipts(request)
                    .await
                    .ok()
                    .map(|r| r.into_inner().receipts)
            }
        },
    )
    .await
}

/// `uid`'s unread counts for one group.
pub async fn unread_in(suite: &Suite, uid: &str, gid: u64) -> Vec<rpb::GroupUnread> {
    let request = rpb::UnreadCountsRequest {
        gids: vec![gid],
        ..Default::default()
    };
    suite
        .receipt(user(uid))
        .unread_counts(request)
        .await
        .expect("unread")
        .into_inner()
        .groups
}
