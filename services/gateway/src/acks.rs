//! The acks of every stream on this gateway, written together. A session hands
//! its unwritten acks over and is answered when they are written, or with what
//! is left and why. The writer sends whatever has gathered as one `AckBatch`
//! call, each group one receipt transaction, while no earlier call holding the
//! same group is out. Under load acks gather while a call is out, so the
//! readers of a busy group cost one transaction per round trip, not one each;
//! when idle, an ack goes at once.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use parley_proto::receipt as rpb;
use parley_server::upstream::ReceiptClient;
use parley_server::{
    Uid,
    error::{may_pass, rebuilt},
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

/// Acks by (gid, read): the highest seq not yet written.
pub type AckBatch = BTreeMap<(u64, bool), u64>;

/// Acks that could not be written, and why.
#[derive(Debug)]
pub struct AckFailure {
    /// What is left to write.
    pub unwritten: AckBatch,
    /// Why the first of them failed.
    pub status: Status,
}

/// Most acks in one call (the receipt service's limit).
const MAX_ACKS_PER_CALL: usize = 5000;
/// Calls out at once.
const MAX_CALLS: usize = 4;
/// Hand-overs queued for the writer; each session has at most one out.
const QUEUE: usize = 1024;

/// A handle to the gateway's ack writer; cloned into every session. The writer
/// stops once every handle is gone and what it holds is written.
#[derive(Clone, Debug)]
pub struct AckWriter {
    submit: mpsc::Sender<Submission>,
}

impl AckWriter {
    /// Starts the writer on its own task.
    pub fn start(receipt: ReceiptClient) -> Self {
        let (submit, submissions) = mpsc::channel(QUEUE);
        tokio::spawn(Writer::new(receipt).run(submissions));
        Self { submit }
    }

    /// Writes `acks` of `uid`; answers once every one of them is written or
    /// refused for good, or with the ones a retry should write again.
    pub async fn write(&self, uid: Uid, acks: AckBatch) -> Result<(), AckFailure> {
        let (done, answer) = oneshot::channel();
        let submission = Submission {
            uid,
            acks: acks.clone(),
            done,
        };
        let stopped = || AckFailure {
            unwritten: acks.clone(),
            status: Status::unavailable("the gateway's ack writer has stopped"),
        };
        if self.submit.send(submission).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// One session's hand-over.
#[derive(Debug)]
struct Submission {
    uid: Uid,
    acks: AckBatch,
    done: oneshot::Sender<Result<(), AckFailure>>,
}

/// One ack waiting for, or in, a call.
#[derive(Clone, Debug)]
struct Entry {
    submission: u64,
    uid: Uid,
    read: bool,
    seq: u64,
}

impl Entry {
    fn to_wire(&self) -> rpb::MemberAck {
        let kind = if self.read {
            rpb::AckKind::Read
        } else {
            rpb::AckKind::Delivered
        };
        rpb::MemberAck {
            uid: self.uid.as_str().to_owned(),
            up_to_seq: self.seq,
            kind: kind.into(),
        }
    }
}

/// A hand-over not yet answered.
#[derive(Debug)]
struct Open {
    left: usize,
    failure: Option<AckFailure>,
    done: oneshot::Sender<Result<(), AckFailure>>,
}

/// The groups of one call and their acks, in the call's order.
type CallGroups = Vec<(u64, Vec<Entry>)>;
type Call = BoxFuture<'static, (CallGroups, Result<rpb::AckBatchResponse, Status>)>;

struct Writer {
    receipt: ReceiptClient,
    /// Acks waiting for a call, by group.
    waiting: BTreeMap<u64, Vec<Entry>>,
    /// Groups in a call that is out.
    busy: HashSet<u64>,
    open: HashMap<u64, Open>,
    next_id: u64,
    calls: FuturesUnordered<Call>,
}

impl Writer {
    fn new(receipt: ReceiptClient) -> Self {
        Self {
            receipt,
            waiting: BTreeMap::new(),
            busy: HashSet::new(),
            open: HashMap::new(),
            next_id: 0,
            calls: FuturesUnordered::new(),
        }
    }

    async fn run(mut self, mut submissions: mpsc::Receiver<Submission>) {
        let mut closed = false;
        while !(closed && self.calls.is_empty() && self.waiting.is_empty()) {
            tokio::select! {
                submission = submissions.recv(), if !closed => match submission {
                    Some(submission) => {
                        self.accept(submission);
                        // Take everything already queued into this turn.
                        while let Ok(more) = submissions.try_recv() {
                            self.accept(more);
                        }
                    }
                    None => closed = true,
                },
                Some((groups, reply)) = self.calls.next(), if !self.calls.is_empty() => {
                    self.settle(groups, reply);
                }
            }
            self.launch();
            let waiting: usize = self.waiting.values().map(Vec::len).sum();
            metrics::gauge!("parley_gateway_acks_waiting").set(waiting as f64);
        }
    }

    fn accept(&mut self, submission: Submission) {
        let Submission { uid, acks, done } = submission;
        if acks.is_empty() {
            let _ = done.send(Ok(()));
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        for (&(gid, read), &seq) in &acks {
            self.waiting.entry(gid).or_default().push(Entry {
                submission: id,
                uid: uid.clone(),
                read,
                seq,
            });
        }
        self.open.insert(
            id,
            Open {
                left: acks.len(),
                failure: None,
                done,
            },
        );
    }

    /// Sends the waiting acks of groups with no call out, up to the limits.
    fn launch(&mut self) {
        while self.calls.len() < MAX_CALLS {
            let mut groups: CallGroups = Vec::new();
            let mut room = MAX_ACKS_PER_CALL;
            for (&gid, entries) in &mut self.waiting {
                if room == 0 {
                    break;
                }
                if self.busy.contains(&gid) {
                    continue;
                }
                let taken: Vec<Entry> = entries.drain(..entries.len().min(room)).collect();
                room -= taken.len();
                groups.push((gid, taken));
            }
            if groups.is_empty() {
                return;
            }
            for (gid, _) in &groups {
                self.busy.insert(*gid);
            }
            self.waiting.retain(|_, entries| !entries.is_empty());
            self.calls.push(call(self.receipt.clone(), groups));
        }
    }

    /// Answers the acks of a call that came back.
    fn settle(&mut self, groups: CallGroups, reply: Result<rpb::AckBatchResponse, Status>) {
        for (gid, _) in &groups {
            self.busy.remove(gid);
        }
        let answers: Vec<Result<(), Status>> = match reply {
            Ok(reply) if answers_each(&groups, &reply) => reply
                .groups
                .into_iter()
                .map(|answer| {
                    for refused in answer.acks.iter().filter(|a| a.code != 0) {
                        let code = Code::from(refused.code);
                        tracing::debug!(gid = answer.gid, ?code, "ack refused");
                    }
                    match Code::from(answer.code) {
                        Code::Ok => Ok(()),
                        code => Err(rebuilt(code, &answer.reason, answer.message)),
                    }
                })
                .collect(),
            reply => {
                let status = reply.err().unwrap_or_else(|| {
                    Status::internal("the receipt service answered another batch")
                });
                if !may_pass(&status) {
                    tracing::warn!(code = ?status.code(), reason = %status.message(), "the receipt service refused a batch of acks");
                }
                vec![Err(status); groups.len()]
            }
        };
        for ((gid, entries), answer) in groups.into_iter().zip(answers) {
            // A refusal for good drops the acks; a transient one hands them
            // back to their sessions to retry.
            let retry = match answer {
                Ok(()) => None,
                Err(status) if may_pass(&status) => Some(status),
                Err(status) => {
                    tracing::debug!(gid, code = ?status.code(), "acks refused");
                    None
                }
            };
            for entry in entries {
                self.settle_entry(entry, gid, retry.as_ref());
            }
        }
    }

    /// One ack is done: written, refused for good, or (with `failed`) to be
    /// retried by its session.
    fn settle_entry(&mut self, entry: Entry, gid: u64, failed: Option<&Status>) {
        let Some(open) = self.open.get_mut(&entry.submission) else {
            return;
        };
        if let Some(status) = failed {
            let failure = open.failure.get_or_insert_with(|| AckFailure {
                unwritten: AckBatch::new(),
                status: status.clone(),
            });
            failure.unwritten.insert((gid, entry.read), entry.seq);
        }
        open.left = open.left.saturating_sub(1);
        if open.left == 0
            && let Some(open) = self.open.remove(&entry.submission)
        {
            let answer = open.failure.map_or(Ok(()), Err);
            let _ = open.done.send(answer);
        }
    }
}

/// Whether a reply answers each group of the call, in order.
fn answers_each(groups: &CallGroups, reply: &rpb::AckBatchResponse) -> bool {
    reply.groups.len() == groups.len()
        && groups
            .iter()
            .zip(&reply.groups)
            .all(|((gid, entries), answer)| {
                answer.gid == *gid && (answer.code != 0 || answer.acks.len() == entries.len())
            })
}

fn call(mut receipt: ReceiptClient, groups: CallGroups) -> Call {
    async move {
        metrics::histogram!("parley_gateway_acks_per_call")
            .record(groups.iter().map(|(_, e)| e.len()).sum::<usize>() as f64);
        let request = rpb::AckBatchRequest {
            groups: groups
                .iter()
                .map(|(gid, entries)| rpb::GroupAcks {
                    gid: *gid,
                    acks: entries.iter().map(Entry::to_wire).collect(),
                })
                .collect(),
        };
        let reply = receipt
            .ack_batch(request)
            .await
            .map(tonic::Response::into_inner);
        (groups, reply)
    }
    .boxed()
}
