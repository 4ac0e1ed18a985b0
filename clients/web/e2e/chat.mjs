// End to end in headless Chromium (Debian's, driven by playwright-core; no
// downloaded browser): `parley dev` serves the built web client, two users
// chat in two browser contexts, and a dropped connection misses nothing.
// Screenshots of each step go to target/web-e2e/.
//
//   node e2e/chat.mjs        (after `npm run build` and `cargo build -p parley-cli`)

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const root = path.resolve(import.meta.dirname, "../../..");
const shots = path.join(root, "target", "web-e2e");
const parleyBin = process.env.PARLEY_BIN ?? path.join(root, "target", "debug", "parley");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT_MS = 30_000;

let step = 0;
const log = (line) => console.log(`web-e2e: ${line}`);

/** Polls `check` until it returns something truthy, or fails saying `what`. */
async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function shot(page, name) {
  step += 1;
  const file = path.join(shots, `${String(step).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
  log(`step ${step}: ${name} (${path.relative(root, file)})`);
}

/** `parley dev` on a free range of ports, with the web client. */
async function startSuite() {
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const base = 20_000 + Math.floor(Math.random() * 15_000);
    const data = fs.mkdtempSync(path.join(os.tmpdir(), "parley-web-e2e-"));
    const child = spawn(
      parleyBin,
      ["dev", "--data", data, "--ports", String(base), "--web", path.join(root, "clients/web/dist")],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn", NO_COLOR: "1" } },
    );
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    const ready = until("parley dev to start", async () => output.includes("Ctrl-C stops everything"));
    const outcome = await Promise.race([ready.then(() => "ready"), exited.then(() => "exited")]);
    if (outcome === "ready") {
      return { child, web: base + 29, ws: base + 10, data, output: () => output };
    }
    log(`parley dev did not start on ports from ${base}; trying others:\n${output}`);
  }
  throw new Error("parley dev did not start");
}

/** A TCP proxy in front of the gateway's WebSocket, to cut the network. */
function proxy(targetPort) {
  const sockets = new Set();
  let open = true;
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ]) {
      a.pipe(b);
      a.on("error", () => b.destroy());
      a.on("close", () => b.destroy());
      sockets.add(a);
      a.on("close", () => sockets.delete(a));
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: server.address().port,
        /** Cuts every connection and refuses new ones. */
        cut() {
          open = false;
          for (const socket of sockets) socket.destroy();
        },
        restore() {
          open = true;
        },
        close() {
          server.close();
        },
      });
    });
  });
}

async function signIn(browser, site, uid) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => log(`${uid}'s page: ${error.message}`));
  await page.goto(site);
  await page.getByTestId("uid").fill(uid);
  await page.getByTestId("sign-in").click();
  await until(`${uid} to be live`, () => page.getByTestId("state").getAttribute("data-state").then((s) => s === "live"));
  return page;
}

const group = (page, name) => page.locator(`[data-testid=group][data-name="${name}"]`);
const badge = (page, name) => group(page, name).getByTestId("unread");
const texts = (page) => page.locator("[data-testid=message] .text").allTextContents();

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  if (!fs.existsSync(chromiumPath)) throw new Error(`no Chromium at ${chromiumPath} (apt-get install chromium)`);
  const suite = await startSuite();
  const gate = await proxy(suite.ws);
  const site = `http://127.0.0.1:${suite.web}/?ws=${encodeURIComponent(`ws://127.0.0.1:${gate.port}/v1/ws`)}`;
  log(`suite on ${site}`);
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--no-sandbox"] });
  try {
    const alice = await signIn(browser, site, "alice");
    await shot(alice, "alice-signed-in");
    const bob = await signIn(browser, site, "bob");
    // Bob's laptop: another browser, so another device of his.
    const laptop = await signIn(browser, site, "bob");

    // Alice starts a group with Bob and Carol (who stays away): N is 2.
    await alice.getByTestId("new-group-name").fill("Design");
    await alice.getByTestId("new-group-members").fill("bob, carol");
    await alice.getByTestId("new-group").click();
    await group(alice, "Design").waitFor();
    await alice.getByTestId("composer").fill("Hello Bob, the mockups are in");
    await alice.getByTestId("send").click();
    await until("alice's message", async () => (await texts(alice)).includes("Hello Bob, the mockups are in"));
    await shot(alice, "alice-sends");

    // Bob's unread badge goes up...
    await until("bob's unread badge to show 1", async () => (await badge(bob, "Design").textContent()) === "1");
    await shot(bob, "bob-unread-badge");
    await until("the laptop's badge to show 1", async () => (await badge(laptop, "Design").textContent()) === "1");
    // ...and back to zero once he reads, on this device and live on his laptop.
    await group(bob, "Design").click();
    await until("bob to see the message", async () => (await texts(bob)).includes("Hello Bob, the mockups are in"));
    await until("bob's badge to clear", () => badge(bob, "Design").isHidden());
    await shot(bob, "bob-reads");
    await until("the laptop's badge to clear (read sync)", () => badge(laptop, "Design").isHidden());
    await shot(laptop, "bob-laptop-read-sync");

    // Alice sees "read by 1 of 2", and Bob's name in the who-read list.
    const receipt = alice.getByTestId("receipt").first();
    await until("read by 1 of 2", async () => (await receipt.textContent()) === "read by 1 of 2");
    await shot(alice, "alice-read-by-1-of-2");
    await receipt.click();
    await until("bob in the who-read list", async () => {
      const read = await alice
        .getByTestId("read-by")
        .locator("li")
        .evaluateAll((items) => items.map((item) => item.dataset.uid));
      const unread = await alice.getByTestId("not-read-by").locator("li").allTextContents();
      return read.join() === "bob" && unread.join() === "carol";
    });
    await shot(alice, "alice-who-read");

    // Bob types; Alice sees it.
    await bob.getByTestId("composer").pressSequentially("On it", { delay: 30 });
    await until("alice to see bob typing", async () => (await alice.getByTestId("typing").textContent()) === "bob is typing…");
    await shot(alice, "alice-sees-bob-typing");
    await bob.getByTestId("send").click();
    await until("bob's reply at alice", async () => (await texts(alice)).includes("On it"));

    // The network drops under both; Alice writes while it is down.
    gate.cut();
    await until("bob to notice the drop", () =>
      bob.getByTestId("state").getAttribute("data-state").then((s) => s === "reconnecting"),
    );
    await until("alice to notice the drop", () =>
      alice.getByTestId("state").getAttribute("data-state").then((s) => s === "reconnecting"),
    );
    await alice.getByTestId("composer").fill("Sent while the network was down");
    await alice.getByTestId("send").click();
    await shot(bob, "bob-offline");
    gate.restore();
    for (const [name, page] of [
      ["alice", alice],
      ["bob", bob],
    ]) {
      await until(`${name} to be live again`, () =>
        page.getByTestId("state").getAttribute("data-state").then((s) => s === "live"),
      );
    }
    await until("bob to get what was sent while he was away", async () =>
      (await texts(bob)).includes("Sent while the network was down"),
    );
    const seen = await texts(bob);
    const expected = ["Hello Bob, the mockups are in", "On it", "Sent while the network was down"];
    if (JSON.stringify(seen) !== JSON.stringify(expected)) {
      throw new Error(`bob's conversation after the reconnect: ${JSON.stringify(seen)}`);
    }
    await shot(bob, "bob-resynced");
    await until("alice's last message read by bob", async () =>
      (await alice.getByTestId("receipt").last().textContent()) === "read by 1 of 2",
    );
    await shot(alice, "alice-after-reconnect");
    log(`passed: ${step} screenshots in ${path.relative(root, shots)}`);
  } finally {
    await browser.close();
    gate.close();
    suite.child.kill("SIGTERM");
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`web-e2e: FAILED: ${error.stack ?? error}`);
    process.exit(1);
  },
);
