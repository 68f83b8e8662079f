// Drives rafael's dashboard in a real headless Chromium (Debian's, through playwright-core), as
// an operator would, for control/tests/dashboard.rs, which started rafael and checks through
// the API afterwards that what this script did really happened.
//
//   node dashboard.mjs operate   log in, watch a route's figures change, approve a proposal,
//                                start and stop an experiment, verify the audit log, search
//                                the vault
//   node dashboard.mjs open      a loopback rafael without tokens: nothing is asked
//
// Environment: RAFAEL_ADMIN, RAFAEL_PROXY (URLs), RAFAEL_TOKEN, RAFAEL_PROPOSAL (an id),
// SCREENSHOTS (a directory), CHROMIUM (the browser, /usr/bin/chromium by default).
// Prints one JSON line of what it saw; exits 1 with the reason on the first thing that fails.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const mode = process.argv[2] ?? "operate";
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const admin = env("RAFAEL_ADMIN");
const shots = env("SCREENSHOTS");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // As root in a container Chromium's sandbox cannot start; the page is rafael's own.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const seen = { mode, screenshots: [] };
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const problems = [];
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
page.on("console", (message) => {
  if (message.type() !== "error") return;
  // The browser logs every non-2xx answer. A 401 before the token is given is how the page
  // learns it must ask for one, and the report's 409 means "not written yet": both expected.
  const url = message.location()?.url ?? "";
  const expected =
    (/status of 401/.test(message.text()) && !loggedIn) ||
    (/status of 409/.test(message.text()) && url.endsWith("/report"));
  if (!expected) problems.push(`console: ${message.text()} (${url})`);
});
let loggedIn = false;

async function shot(name) {
  const path = join(shots, `${String(seen.screenshots.length + 1).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  seen.screenshots.push(path);
}

/** Waits until `read()` answers something `ok` accepts, polling; returns it. */
async function until(what, read, ok, timeout = 20000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await read();
    if (ok(last)) return last;
    await page.waitForTimeout(250);
  }
  throw new Error(`${what}: still ${JSON.stringify(last)} after ${timeout} ms`);
}

const text = (testid) => page.getByTestId(testid).first().innerText();

try {
  await page.goto(admin);
  if (mode === "open") {
    await page.getByTestId("route-main").waitFor();
    seen.login_asked = await page.getByTestId("login").isVisible();
    if (seen.login_asked) throw new Error("the login dialog opened on a rafael without tokens");
    await until("the live stream", () => text("live"), (t) => t === "live");
    await shot("open-routes");
  } else {
    // The token, asked once.
    await page.getByTestId("login").waitFor({ state: "visible" });
    await shot("login");
    await page.getByTestId("token").fill(env("RAFAEL_TOKEN"));
    await page.getByTestId("login-submit").click();
    loggedIn = true;
    await until("the live stream", () => text("live"), (t) => t === "live");

    // A route's live figures change: a burst of requests the script sends itself raises the
    // rate the table shows, a second or two later.
    await page.getByTestId("route-main").waitFor();
    const before = await until("a first rate", () => text("rate-main"), (t) => Number(t) > 0);
    const proxy = env("RAFAEL_PROXY");
    await Promise.all(Array.from({ length: 400 }, () => fetch(`${proxy}/work`).then((r) => r.text())));
    const after = await until("the rate after a burst", () => text("rate-main"), (t) => Number(t) > Number(before) + 10);
    seen.rate = { before: Number(before), after: Number(after) };
    seen.success = await text("success-main");
    seen.p99 = await text("p99-main");
    await shot("routes-live");

    // The route: its figures, charts, genome, lineage and model.
    await page.getByTestId("route-main").click();
    await page.getByTestId("route-rate").waitFor();
    await page.locator("svg.chart polyline").first().waitFor();
    await page.getByTestId("lineage").waitFor();
    await page.getByTestId("model").waitFor({ timeout: 30000 }).catch(() => {});
    seen.route_generation = Number(await text("route-generation"));
    await shot("route");

    // A proposal: its diff and predicted impact; approve it with a comment.
    const id = env("RAFAEL_PROPOSAL");
    await page.goto(`${admin}/#/proposals/${id}`);
    await page.getByTestId("diff").waitFor();
    seen.diff_rows = await page.getByTestId("diff").locator("tbody tr").count();
    seen.predicted_rows = await page.getByTestId("predicted").locator("tbody tr").count();
    await shot("proposal");
    await page.getByTestId("comment").fill("approved from the dashboard test");
    await page.getByTestId("approve").click();
    seen.proposal_state = await until(
      "the approved proposal's state",
      () => text("proposal-state"),
      (t) => ["applied", "kept"].includes(t),
    );
    await shot("proposal-approved");

    // An experiment from the threat table: start it, watch it run, stop it, read its report.
    await page.goto(`${admin}/#/experiments`);
    await page.getByTestId("threat-latency-low").getByRole("button").click();
    await until("the chosen threat", () => text("chosen"), (t) => t === "latency:low");
    await page.getByTestId("experiment-route").selectOption("main");
    await page.getByTestId("experiment-duration").fill("120s");
    await page.getByTestId("start-experiment").click();
    await until("the running experiment", () => text("experiment-state"), (t) => t === "running");
    seen.experiment = Number(new URL(page.url()).hash.split("/").pop());
    await shot("experiment-running");
    await page.getByTestId("stop-experiment").click();
    seen.experiment_state = await until("the stopped experiment", () => text("experiment-state"), (t) => t === "stopped");
    await page.getByTestId("report").waitFor();
    await shot("experiment-report");

    // The audit log, verified; the vault, searched.
    await page.goto(`${admin}/#/audit`);
    await page.getByTestId("verify").click();
    seen.verify = await until("the verification", () => text("verify-result"), (t) => t.startsWith("chain holds"));
    await shot("audit");
    await page.goto(`${admin}/#/vault`);
    await page.getByTestId("vault-q").fill("grpc");
    await page.getByTestId("vault-search").click();
    await page.getByTestId("pattern-grpc-unary").waitFor();
    seen.patterns = await page.getByTestId("patterns").locator("tbody tr").count();
    await shot("vault");
    await page.goto(`${admin}/#/api`);
    await page.getByTestId("openapi").waitFor();
    seen.operations = await page.getByTestId("openapi").locator("tbody tr").count();
    await shot("api");
    // The token was asked once: a new view in the same tab asks nothing.
    seen.login_asked_again = await page.getByTestId("login").isVisible();
  }
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify(seen));
  await browser.close();
} catch (error) {
  await shot("failure").catch(() => {});
  console.error(`${error.stack ?? error}\n${problems.join("\n")}`);
  await browser.close();
  process.exit(1);
}
