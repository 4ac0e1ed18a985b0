// Parley's web client: sign in as a dev user, the group list with unread
// badges, a conversation with live messages, "read by k of N" under my
// messages (who read on click), typing indicators, and reconnect with resync.

import { create } from "@bufbuild/protobuf";
import {
  CreateGroupCallSchema,
  type DeliveredMessage,
  type GroupSummary,
  HistoryCallSchema,
  ListGroupsCallSchema,
  ReadersCallSchema,
} from "./gen/parley/gateway/v1/gateway_pb";
import { Connection, type State } from "./protocol";
import "./style.css";

interface Group {
  gid: bigint;
  name: string;
  memberCount: number;
  lastSeq: bigint;
  readSeq: bigint;
}

interface Receipt {
  read: number;
  of: number;
}

const TYPING_SHOWN_MS = 4000;

const app = document.querySelector<HTMLDivElement>("#app")!;
const params = new URLSearchParams(location.search);

let me = "";
let connection: Connection | undefined;
const groups = new Map<bigint, Group>();
const messages = new Map<bigint, DeliveredMessage[]>();
const receipts = new Map<bigint, Receipt>();
const typists = new Map<bigint, Map<string, number>>();
let open: bigint | undefined;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

const text = (message: DeliveredMessage) => new TextDecoder().decode(message.content);
const unread = (group: Group) => (group.lastSeq > group.readSeq ? group.lastSeq - group.readSeq : 0n);

async function gatewayUrl(): Promise<string> {
  const override = params.get("ws");
  if (override) return override;
  const config = (await (await fetch("/config.json")).json()) as { ws: string };
  return config.ws;
}

function deviceId(uid: string): string {
  const key = `parley-device-${uid}`;
  let id = localStorage.getItem(key);
  if (!id) {
    id = `web-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem(key, id);
  }
  return id;
}

function signIn(): void {
  const uid = el("input", { "data-testid": "uid", placeholder: "alice", autocomplete: "off" });
  const button = el("button", { "data-testid": "sign-in", type: "submit" }, "Sign in");
  const error = el("p", { class: "error", "data-testid": "sign-in-error" });
  const form = el("form", { class: "sign-in" }, el("h1", {}, "Parley"), el("label", {}, "Dev user ", uid), button, error);
  form.onsubmit = async (event) => {
    event.preventDefault();
    const name = uid.value.trim();
    const reply = await fetch(`/dev/token?uid=${encodeURIComponent(name)}`);
    if (!reply.ok) {
      error.textContent = await reply.text();
      return;
    }
    const { token } = (await reply.json()) as { token: string };
    me = name;
    await start(token);
  };
  app.replaceChildren(form);
}

async function start(token: string): Promise<void> {
  connection = new Connection(await gatewayUrl(), token, deviceId(me), {
    state: (state, detail) => showState(state, detail),
    message: (message) => onMessage(message),
    receipts: (entries) => {
      for (const entry of entries) receipts.set(entry.msgid, { read: entry.readCount, of: entry.recipientCount });
      renderConversation();
    },
    readSync: (positions) => {
      for (const position of positions) {
        const group = groups.get(position.gid);
        if (group && position.readSeq > group.readSeq) group.readSeq = position.readSeq;
      }
      renderGroups();
      renderConversation();
    },
    typing: (gid, uid) => {
      const now = typists.get(gid) ?? new Map<string, number>();
      now.set(uid, Date.now());
      typists.set(gid, now);
      renderTyping();
      setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
    },
  });
  layout();
  connection.start();
}

function layout(): void {
  const state = el("span", { class: "state", "data-testid": "state" }, "connecting");
  const header = el("header", {}, el("strong", {}, "Parley"), el("span", { "data-testid": "me" }, ` · ${me}`), state);
  const name = el("input", { "data-testid": "new-group-name", placeholder: "Group name" });
  const members = el("input", { "data-testid": "new-group-members", placeholder: "bob, carol" });
  const create = el("button", { "data-testid": "new-group", type: "submit" }, "New group");
  const form = el("form", { class: "new-group" }, name, members, create);
  form.onsubmit = (event) => {
    event.preventDefault();
    void createGroup(name.value.trim(), members.value);
    name.value = "";
    members.value = "";
  };
  const list = el("ul", { class: "groups", "data-testid": "groups" });
  const conversation = el("section", { class: "conversation", "data-testid": "conversation" });
  app.replaceChildren(header, el("main", {}, el("aside", {}, form, list), conversation));
  renderConversation();
}

function showState(state: State, detail: string): void {
  const badge = document.querySelector<HTMLSpanElement>("[data-testid=state]");
  if (badge) {
    badge.textContent = state;
    badge.title = detail;
    badge.dataset.state = state;
  }
  if (state === "refused") {
    connection?.stop();
    signIn();
  }
  // Live again: the group list and the open conversation are read afresh.
  if (state === "live") void refresh();
}

async function refresh(): Promise<void> {
  if (!connection) return;
  let pageToken = "";
  const listed: GroupSummary[] = [];
  do {
    const result = await connection.call({
      case: "listGroups",
      value: create(ListGroupsCallSchema, { pageSize: 200, pageToken }),
    });
    if (result.result.case !== "groups") return;
    listed.push(...result.result.value.groups);
    pageToken = result.result.value.nextPageToken;
  } while (pageToken);
  for (const summary of listed) {
    const known = groups.get(summary.gid);
    groups.set(summary.gid, {
      gid: summary.gid,
      name: summary.name || `chat ${summary.gid}`,
      memberCount: summary.memberCount,
      lastSeq: known && known.lastSeq > summary.lastSeq ? known.lastSeq : summary.lastSeq,
      readSeq: known && known.readSeq > summary.readSeq ? known.readSeq : summary.readSeq,
    });
  }
  renderGroups();
  if (open !== undefined) await loadHistory(open);
}

async function createGroup(name: string, members: string): Promise<void> {
  if (!connection) return;
  const memberUids = members
    .split(",")
    .map((m) => m.trim())
    .filter(Boolean);
  const result = await connection.call({
    case: "createGroup",
    value: create(CreateGroupCallSchema, { direct: false, name, memberUids }),
  });
  if (result.result.case === "created" && result.result.value.group) {
    await refresh();
    await openGroup(result.result.value.group.gid);
  }
}

function onMessage(message: DeliveredMessage): void {
  const group = groups.get(message.gid);
  if (!group) {
    // A group I was just added to: the list is read again.
    void refresh();
  } else if (message.seq > group.lastSeq) {
    group.lastSeq = message.seq;
  }
  const list = messages.get(message.gid);
  if (list && !list.some((m) => m.seq === message.seq)) {
    list.push(message);
    list.sort((a, b) => (a.seq < b.seq ? -1 : 1));
  }
  typists.get(message.gid)?.delete(message.senderUid);
  // My own messages, and those of the conversation I am looking at, are read.
  if (message.senderUid === me || (open === message.gid && document.visibilityState === "visible")) {
    markRead(message.gid, message.seq);
  }
  renderGroups();
  renderConversation();
}

function markRead(gid: bigint, seq: bigint): void {
  const group = groups.get(gid);
  if (group && seq > group.readSeq) group.readSeq = seq;
  connection?.markRead(gid, seq);
}

async function openGroup(gid: bigint): Promise<void> {
  open = gid;
  renderGroups();
  renderConversation();
  await loadHistory(gid);
}

async function loadHistory(gid: bigint): Promise<void> {
  const group = groups.get(gid);
  if (!connection || !group) return;
  const result = await connection.call({
    case: "history",
    value: create(HistoryCallSchema, { gid, beforeSeq: group.lastSeq + 1n, limit: 50 }),
  });
  if (result.result.case !== "history") return;
  const known = messages.get(gid) ?? [];
  const bySeq = new Map(known.map((m) => [m.seq, m]));
  for (const message of result.result.value.messages) bySeq.set(message.seq, message);
  const list = [...bySeq.values()].sort((a, b) => (a.seq < b.seq ? -1 : 1));
  messages.set(gid, list);
  for (const message of list) if (message.senderUid === me) connection.watch(message.msgid);
  const last = list.at(-1);
  if (last && open === gid) markRead(gid, last.seq);
  renderGroups();
  renderConversation();
}

function renderGroups(): void {
  const list = document.querySelector<HTMLUListElement>("[data-testid=groups]");
  if (!list) return;
  const items = [...groups.values()]
    .sort((a, b) => (a.gid < b.gid ? -1 : 1))
    .map((group) => {
      const count = unread(group);
      const badge = el("span", { class: "badge", "data-testid": "unread" }, count > 0n ? String(count) : "");
      badge.hidden = count === 0n;
      const item = el("li", { "data-testid": "group", "data-gid": String(group.gid), "data-name": group.name }, group.name, badge);
      if (group.gid === open) item.classList.add("open");
      item.onclick = () => void openGroup(group.gid);
      return item;
    });
  list.replaceChildren(...items);
}

function renderConversation(): void {
  const section = document.querySelector<HTMLElement>("[data-testid=conversation]");
  if (!section) return;
  const group = open === undefined ? undefined : groups.get(open);
  if (!group) {
    section.replaceChildren(el("p", { class: "hint" }, "Pick a group, or start one."));
    return;
  }
  const list = el("ol", { class: "messages", "data-testid": "messages" });
  for (const message of messages.get(group.gid) ?? []) {
    const mine = message.senderUid === me;
    // Others' messages past my read cursor are new to me, until I read them
    // here or on another device.
    const fresh = !mine && message.seq > group.readSeq;
    const item = el(
      "li",
      {
        "data-testid": "message",
        "data-seq": String(message.seq),
        "data-read": String(!fresh),
        class: mine ? "mine" : fresh ? "unread" : "",
      },
      el("span", { class: "sender" }, message.senderUid),
      el("span", { class: "text" }, text(message)),
    );
    if (mine) {
      const receipt = receipts.get(message.msgid);
      const line = el(
        "button",
        { class: "receipt", "data-testid": "receipt", type: "button" },
        receipt ? `read by ${receipt.read} of ${receipt.of}` : "sent",
      );
      line.onclick = () => void showReaders(group.gid, message.msgid);
      item.append(line);
    }
    list.append(item);
  }
  const composer = el("input", { "data-testid": "composer", placeholder: `Message ${group.name}`, autocomplete: "off" });
  composer.oninput = () => connection?.typing(group.gid);
  const form = el("form", { class: "composer" }, composer, el("button", { "data-testid": "send", type: "submit" }, "Send"));
  form.onsubmit = (event) => {
    event.preventDefault();
    const body = composer.value.trim();
    if (!body || !connection) return;
    composer.value = "";
    void connection.send(group.gid, body);
  };
  const focused = document.activeElement?.getAttribute("data-testid") === "composer";
  const draft = section.querySelector<HTMLInputElement>("[data-testid=composer]")?.value ?? "";
  const readers = section.querySelector("[data-testid=readers]");
  section.replaceChildren(
    el("h2", {}, group.name, el("small", {}, ` · ${group.memberCount} members`)),
    list,
    el("p", { class: "typing", "data-testid": "typing" }),
    ...(readers ? [readers] : []),
    form,
  );
  composer.value = draft;
  if (focused) composer.focus();
  list.scrollTop = list.scrollHeight;
  renderTyping();
}

function renderTyping(): void {
  const line = document.querySelector<HTMLParagraphElement>("[data-testid=typing]");
  if (!line || open === undefined) return;
  const now = Date.now();
  const who = [...(typists.get(open) ?? new Map<string, number>()).entries()]
    .filter(([, at]) => now - at < TYPING_SHOWN_MS)
    .map(([uid]) => uid);
  line.textContent = who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
}

async function showReaders(gid: bigint, msgid: bigint): Promise<void> {
  if (!connection) return;
  const page = async (read: boolean) => {
    const result = await connection!.call({
      case: "readers",
      value: create(ReadersCallSchema, { gid, msgid, read, pageSize: 100 }),
    });
    return result.result.case === "readers" ? result.result.value : undefined;
  };
  const [read, unread] = await Promise.all([page(true), page(false)]);
  const unreadBy = unread?.uids ?? [];
  // Exact when the message kept read times; otherwise "by" the time given.
  const readers = (read?.readTimes ?? []).map((time) => {
    const at = new Date(Number(time.readAtMs)).toLocaleTimeString();
    return el("li", { "data-uid": time.uid }, time.uid, el("small", {}, time.exact ? ` · ${at}` : ` · by ${at}`));
  });
  const panel = el(
    "div",
    { class: "readers", "data-testid": "readers" },
    el("h3", {}, "Read by"),
    el("ul", { "data-testid": "read-by" }, ...readers),
    el("h3", {}, "Not yet"),
    el("ul", { "data-testid": "not-read-by" }, ...unreadBy.map((uid) => el("li", {}, uid))),
  );
  document.querySelector("[data-testid=readers]")?.remove();
  document.querySelector("[data-testid=typing]")?.after(panel);
}

document.addEventListener("visibilitychange", () => {
  const group = open === undefined ? undefined : groups.get(open);
  if (group && document.visibilityState === "visible") markRead(group.gid, group.lastSeq);
});

signIn();
// `?uid=alice` fills the sign-in form.
const preset = params.get("uid");
const uidInput = document.querySelector<HTMLInputElement>("[data-testid=uid]");
if (preset && uidInput) uidInput.value = preset;
