// The gateway protocol over WebSocket, as the README's "Apps" section walks
// through it: connect and authenticate in the first frame, take the backlog,
// go live, close gaps by seq, ack in batches, heartbeat, and reconnect with
// backoff, resending what was not confirmed (sends are idempotent on their
// client_msg_id) and dropping what was already seen.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type AckEntry,
  AckEntrySchema,
  type ConnectRequest,
  ConnectRequestSchema,
  ConnectResponseSchema,
  type DeliveredMessage,
  type ReadPosition,
  type ReceiptDigestEntry,
  type RequestFrame,
  RequestFrameSchema,
  type ResultFrame,
  type SendResultFrame,
  type SyncResultFrame,
} from "./gen/parley/gateway/v1/gateway_pb";

/** Where the connection is. */
export type State =
  | "connecting" // opening the socket, or waiting for auth_ok
  | "backlog" // authenticated: the gateway is sending what came while away
  | "live" // the backlog is done: frames arrive as they happen
  | "reconnecting" // the socket dropped: trying again with backoff
  | "refused"; // the gateway refused the token: sign in again

/** What the connection tells the app. */
export interface Listener {
  state(state: State, detail: string): void;
  /** A message, once, in seq order within its group. */
  message(message: DeliveredMessage): void;
  /** Receipt counts of my messages changed. */
  receipts(entries: ReceiptDigestEntry[]): void;
  /** My read positions moved (on another device, or this one). */
  readSync(positions: ReadPosition[]): void;
  /** Someone is typing in a group. */
  typing(gid: bigint, uid: string): void;
}

/** A call the gateway refused: the gRPC code and reason it gave. */
/**
 * A refused call or send: the gRPC `code`, the stable `reason` to switch on
 * (`NOT_A_MEMBER`, `GROUP_FULL`, ...; empty when the gateway gave none) and
 * a message for people.
 */
export class Refused extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

type Call = RequestFrame["call"];
type Waiter<T> = { resolve(value: T): void; reject(error: Error): void };

/** A send not yet confirmed: resent as it was after a reconnect. */
interface Unconfirmed {
  gid: bigint;
  clientMsgId: string;
  content: Uint8Array;
  waiter: Waiter<SendResultFrame>;
}

/** Close code for a refusal: 4000 plus the gRPC status code. */
const REFUSED_BASE = 4000;
const UNAUTHENTICATED = 16;
/** Acks wait this long to be sent together. */
const ACK_DELAY_MS = 250;
/** Messages of mine whose receipts each heartbeat asks after. */
const MAX_WATCHED = 100;
/** A typing frame is sent at most this often per group. */
const TYPING_EVERY_MS = 3000;

export class Connection {
  private socket?: WebSocket;
  private state: State = "connecting";
  private nextRequest = 1n;
  private attempt = 0;
  private stopped = false;
  private heartbeatTimer?: ReturnType<typeof setInterval>;
  private ackTimer?: ReturnType<typeof setTimeout>;
  private readonly calls = new Map<bigint, Waiter<ResultFrame>>();
  private readonly syncs = new Map<bigint, Waiter<SyncResultFrame>>();
  private readonly unconfirmed = new Map<bigint, Unconfirmed>();
  /** Per group, the highest seq handed to the app. */
  private readonly seen = new Map<bigint, bigint>();
  /** Acks to send, per group and kind: the highest seq wins. */
  private readonly acks = new Map<string, AckEntry>();
  /** My messages whose receipts the heartbeat asks after, newest last. */
  private readonly watched: bigint[] = [];
  private readonly typedAt = new Map<bigint, number>();
  private receiptsCursor: string;

  constructor(
    private readonly url: string,
    private readonly token: string,
    private readonly deviceId: string,
    private readonly listener: Listener,
  ) {
    this.receiptsCursor = localStorage.getItem(this.cursorKey()) ?? "";
  }

  /** Opens the connection; it reconnects by itself until stopped. */
  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    this.socket?.close(1000, "signed out");
  }

  /** Makes a client API call as this user. */
  call(call: Call): Promise<ResultFrame> {
    const requestId = this.nextRequest++;
    const request = create(RequestFrameSchema, { requestId, call });
    return new Promise<ResultFrame>((resolve, reject) => {
      if (!this.sendFrame({ case: "request", value: request })) {
        reject(new Error("not connected"));
        return;
      }
      this.calls.set(requestId, { resolve, reject });
    }).then((frame) => {
      if (frame.code !== 0) throw new Refused(frame.code, frame.reason, frame.error);
      return frame;
    });
  }

  /** Sends a message; resolves once it is stored, however many reconnects that takes. */
  send(gid: bigint, text: string): Promise<SendResultFrame> {
    const requestId = this.nextRequest++;
    const content = new TextEncoder().encode(text);
    const clientMsgId = crypto.randomUUID();
    return new Promise((resolve, reject) => {
      this.unconfirmed.set(requestId, { gid, clientMsgId, content, waiter: { resolve, reject } });
      this.sendMessage(requestId);
    });
  }

  /** Marks everything up to `seq` in `gid` read (sent with the next ack batch). */
  markRead(gid: bigint, seq: bigint): void {
    this.queueAck(gid, seq, true);
  }

  /** Says I am typing in `gid`, at most every few seconds. */
  typing(gid: bigint): void {
    const now = Date.now();
    if (now - (this.typedAt.get(gid) ?? 0) < TYPING_EVERY_MS) return;
    this.typedAt.set(gid, now);
    this.sendFrame({ case: "typing", value: { $typeName: "parley.gateway.v1.TypingFrame", gid } });
  }

  /** Asks the heartbeat to report receipts of this message of mine. */
  watch(msgid: bigint): void {
    if (this.watched.includes(msgid)) return;
    this.watched.push(msgid);
    if (this.watched.length > MAX_WATCHED) this.watched.shift();
  }

  private cursorKey(): string {
    return `parley-receipts-cursor-${this.deviceId}`;
  }

  private setState(state: State, detail = ""): void {
    this.state = state;
    this.listener.state(state, detail);
  }

  private open(): void {
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const socket = new WebSocket(this.url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      // The token goes in the first frame, never in the URL.
      this.sendFrame({
        case: "auth",
        value: {
          $typeName: "parley.gateway.v1.AuthFrame",
          token: this.token,
          deviceId: this.deviceId,
          receiptsCursor: this.receiptsCursor,
        },
      });
    };
    socket.onmessage = (event) => this.onFrame(new Uint8Array(event.data as ArrayBuffer));
    socket.onclose = (event) => this.onClose(event.code, event.reason);
  }

  private onClose(code: number, reason: string): void {
    clearInterval(this.heartbeatTimer);
    this.socket = undefined;
    const gone = new Error(`disconnected: ${reason || code}`);
    for (const waiter of [...this.calls.values(), ...this.syncs.values()]) waiter.reject(gone);
    this.calls.clear();
    this.syncs.clear();
    if (this.stopped) return;
    if (code === REFUSED_BASE + UNAUTHENTICATED) {
      this.setState("refused", reason);
      return;
    }
    // Backoff with jitter: 0.5 s, 1 s, 2 s ... up to 15 s.
    const delay = Math.min(15_000, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.setState("reconnecting", reason || `closed (${code})`);
    setTimeout(() => this.open(), delay);
  }

  private sendFrame(frame: ConnectRequest["frame"]): boolean {
    if (this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(toBinary(ConnectRequestSchema, create(ConnectRequestSchema, { frame })));
    return true;
  }

  private sendMessage(requestId: bigint): void {
    const send = this.unconfirmed.get(requestId);
    if (!send || this.state === "connecting" || this.state === "reconnecting") return;
    this.sendFrame({
      case: "send",
      value: {
        $typeName: "parley.gateway.v1.SendFrame",
        requestId,
        gid: send.gid,
        clientMsgId: send.clientMsgId,
        content: send.content,
        needReceipt: true,
      },
    });
  }

  private onFrame(bytes: Uint8Array): void {
    const frame = fromBinary(ConnectResponseSchema, bytes).frame;
    switch (frame.case) {
      case "authOk": {
        this.attempt = 0;
        this.setState("backlog");
        // Answered only once the backlog is sent: the sign that we are live.
        this.heartbeat();
        this.heartbeatTimer = setInterval(() => this.heartbeat(), frame.value.heartbeatIntervalMs);
        // What was sent but not confirmed goes again, with the same ids.
        for (const requestId of this.unconfirmed.keys()) this.sendMessage(requestId);
        break;
      }
      case "message":
        void this.onMessage(frame.value);
        break;
      case "sendResult": {
        const send = this.unconfirmed.get(frame.value.requestId);
        if (!send) break;
        this.unconfirmed.delete(frame.value.requestId);
        if (frame.value.code === 0) {
          this.watch(frame.value.msgid);
          send.waiter.resolve(frame.value);
        } else if (frame.value.retryAfterMs > 0) {
          // Refused for load: the same send again after the hint.
          this.unconfirmed.set(frame.value.requestId, send);
          setTimeout(() => this.sendMessage(frame.value.requestId), frame.value.retryAfterMs);
        } else {
          send.waiter.reject(
            new Refused(frame.value.code, frame.value.reason, frame.value.error),
          );
        }
        break;
      }
      case "syncResult":
        this.syncs.get(frame.value.requestId)?.resolve(frame.value);
        this.syncs.delete(frame.value.requestId);
        break;
      case "result":
        this.calls.get(frame.value.requestId)?.resolve(frame.value);
        this.calls.delete(frame.value.requestId);
        break;
      case "receiptDigest":
        if (frame.value.receiptsCursor) {
          this.receiptsCursor = frame.value.receiptsCursor;
          localStorage.setItem(this.cursorKey(), this.receiptsCursor);
        }
        this.listener.receipts(frame.value.entries);
        break;
      case "heartbeatReply":
        if (this.state === "backlog") this.setState("live");
        if (frame.value.receiptChanges.length > 0) this.listener.receipts(frame.value.receiptChanges);
        break;
      case "readSync":
        this.listener.readSync(frame.value.groups);
        break;
      case "typing":
        this.listener.typing(frame.value.gid, frame.value.uid);
        break;
      case "closing":
        // The gateway asks us to go: the close follows, and we reconnect.
        break;
      default:
        break;
    }
  }

  /** Hands a message to the app once, in order; a gap is filled by seq first. */
  private async onMessage(message: DeliveredMessage): Promise<void> {
    const last = this.seen.get(message.gid);
    if (last !== undefined && message.seq <= last) return;
    if (last !== undefined && message.seq > last + 1n) {
      await this.fill(message.gid, last, message.seq);
      const now = this.seen.get(message.gid) ?? 0n;
      if (message.seq <= now) return;
    }
    this.deliver(message);
  }

  private deliver(message: DeliveredMessage): void {
    this.seen.set(message.gid, message.seq);
    this.queueAck(message.gid, message.seq, false);
    this.listener.message(message);
  }

  /** Syncs the messages of `gid` between `after` and `before`. */
  private async fill(gid: bigint, after: bigint, before: bigint): Promise<void> {
    const requestId = this.nextRequest++;
    const reply = new Promise<SyncResultFrame>((resolve, reject) => {
      this.syncs.set(requestId, { resolve, reject });
    });
    const limit = Number(before - after - 1n);
    if (
      !this.sendFrame({
        case: "sync",
        value: { $typeName: "parley.gateway.v1.SyncFrame", requestId, gid, afterSeq: after, limit },
      })
    ) {
      this.syncs.delete(requestId);
      return;
    }
    try {
      const result = await reply;
      for (const message of result.messages) {
        if (message.seq > (this.seen.get(gid) ?? 0n) && message.seq < before) this.deliver(message);
      }
    } catch {
      // Disconnected: the backlog at the next login brings them.
    }
  }

  private queueAck(gid: bigint, seq: bigint, read: boolean): void {
    const key = `${gid}:${read}`;
    const queued = this.acks.get(key);
    if (!queued || queued.upToSeq < seq) {
      this.acks.set(key, create(AckEntrySchema, { gid, upToSeq: seq, read }));
    }
    this.ackTimer ??= setTimeout(() => this.flushAcks(), ACK_DELAY_MS);
  }

  private flushAcks(): void {
    this.ackTimer = undefined;
    const entries = [...this.acks.values()];
    if (entries.length === 0) return;
    if (this.sendFrame({ case: "ack", value: { $typeName: "parley.gateway.v1.AckFrame", entries } })) {
      this.acks.clear();
    } else {
      // Not connected: kept for after the reconnect.
      this.ackTimer = setTimeout(() => this.flushAcks(), 1000);
    }
  }

  private heartbeat(): void {
    this.sendFrame({
      case: "heartbeat",
      value: { $typeName: "parley.gateway.v1.HeartbeatFrame", watchingMsgids: [...this.watched] },
    });
  }
}
