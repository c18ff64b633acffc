// Sending to outside recipients from the webmail and the pickup portal, end to end. Run by
// tests/web.rs, which starts Sealpost and a receiving SMTP server without TLS (SINK is the
// folder where it writes each message it gets).
//
// A clinician composes to two patients with an attachment and sends; each patient follows
// the notice's link, asks for a code, reads it from their mail, enters it (a wrong one
// first), reads the message, downloads the attachment, and one replies with a file; a patient
// cannot open the other's message by its id (403); the clinician sees "opened" and withdraws
// the other patient's copy, which then no longer opens (410).
//
//   BASE DOC PASSWORD PATIENT OTHER SINK SUBJECT SECRET ATTACHMENT REPLY_TEXT REPLY_FILE ARTIFACTS node portal.mjs
// With MODE=expired: LINK is an expired link; it says so and asks the sender for a new one.

import fs from "node:fs";
import path from "node:path";
import { report, check, sleep, launch } from "./lib.mjs";

const env = process.env;
const { BASE, ARTIFACTS, SINK } = env;
fs.mkdirSync(ARTIFACTS, { recursive: true });




/// Every message the sink holds: { to, text }.
function sinkMessages() {
  const out = [];
  for (let n = 1; n < 1000; n++) {
    const json = path.join(SINK, `${n}.json`);
    if (!fs.existsSync(json)) break;
    const envelope = JSON.parse(fs.readFileSync(json, "utf8"));
    out.push({ to: envelope.to, text: fs.readFileSync(path.join(SINK, `${n}.eml`), "latin1") });
  }
  return out;
}

/// Waits (at most 40 s) for a message to `to` matching `pattern` that was not there before
/// `seen` messages; returns the match.
async function waitForMail(to, pattern, seen) {
  for (let i = 0; i < 400; i++) {
    const found = sinkMessages()
      .slice(seen)
      .filter((m) => m.to.includes(to))
      .map((m) => m.text.replace(/=\r?\n/g, "").match(pattern))
      .find((m) => m);
    if (found) return found;
    await sleep(100);
  }
  check(false, `no mail to ${to} matching ${pattern}: ${JSON.stringify(sinkMessages())}`);
}

async function signIn(context) {
  const page = await context.newPage();
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#address", env.DOC);
  await page.fill("#password", env.PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-in"] button')]);
  return page;
}

/// A patient follows the link, proves the address with a mailed code (after one wrong try
/// when `wrongFirst`), and lands on the message: the page and its portal id.
async function openAsPatient(context, link, address, shot, wrongFirst) {
  const page = await context.newPage();
  const response = await page.goto(link);
  check(response.status() === 200, `the link answered ${response.status()}`);
  const intro = await page.textContent("#pickup");
  check(intro.includes("6-digit code"), `the link's page: ${intro}`);
  check(!intro.includes(env.SUBJECT), "the link's page shows the subject before the code");
  if (shot) await page.screenshot({ path: path.join(ARTIFACTS, "portal-01-link.png"), fullPage: true });
  const before = sinkMessages().length;
  await Promise.all([page.waitForNavigation(), page.click('#with-code button')]);
  check(page.url().endsWith("/verify"), `after asking for a code: ${page.url()}`);
  const code = (await waitForMail(address, /Your code: (\d{6})/, before))[1];
  if (wrongFirst) {
    const wrong = code === "000000" ? "000001" : "000000";
    await page.fill("#code", wrong);
    await Promise.all([page.waitForNavigation(), page.click('#verify form:first-of-type button')]);
    const error = await page.textContent(".error");
    check(error.includes("4 tries left"), `a wrong code: ${error}`);
  }
  if (shot) await page.screenshot({ path: path.join(ARTIFACTS, "portal-02-code.png"), fullPage: true });
  await page.fill("#code", code);
  await Promise.all([page.waitForNavigation(), page.click('#verify form:first-of-type button')]);
  const id = page.url().match(/\/portal\/([0-9a-f]{64})$/);
  check(id, `after the code: ${page.url()}`);
  return { page, id: id[1] };
}

const browser = await launch();
try {
  if (env.MODE === "expired") {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    const response = await page.goto(env.LINK);
    check(response.status() === 410, `an expired link answered ${response.status()}`);
    const text = await page.textContent("#ended");
    check(text.includes("expired"), `an expired link says: ${text}`);
    await page.screenshot({ path: path.join(ARTIFACTS, "portal-06-expired.png"), fullPage: true });
    await Promise.all([page.waitForNavigation(), page.click("#ended button")]);
    const asked = await page.textContent("#ended");
    check(asked.includes("The sender was asked for a new link"), `after asking: ${asked}`);
    check((await page.locator("#ended button").count()) === 0, "asking is offered twice");
    report("expired");
    process.exit(0);
  }

  // The clinician writes to two patients at a domain whose server offers no TLS.
  const doc = await browser.newContext({ ignoreHTTPSErrors: true });
  const mail = await signIn(doc);
  await mail.goto(`${BASE}/compose`);
  await mail.fill("#to", `${env.PATIENT}, Other Patient <${env.OTHER}>`);
  await mail.fill("#subject", env.SUBJECT);
  await mail.fill("#body", `Dear patient,\n${env.SECRET}\nRegards`);
  await mail.setInputFiles("#files", env.ATTACHMENT);
  await mail.screenshot({ path: path.join(ARTIFACTS, "compose-01-form.png"), fullPage: true });
  await Promise.all([mail.waitForNavigation(), mail.click('button[value="send"]')]);
  const queue = mail.url().match(/\/sent\/([0-9a-f]{32})$/);
  check(queue, `after sending: ${mail.url()} ${await mail.textContent("main")}`);
  report("sent", { queue: queue[1] });

  // Only the notices reach the patients' server: a link, nothing of the message.
  const link = (await waitForMail(env.PATIENT, /https:\/\/\S+\/pickup\/[0-9a-f]{64}/, 0))[0];
  const otherLink = (await waitForMail(env.OTHER, /https:\/\/\S+\/pickup\/[0-9a-f]{64}/, 0))[0];
  report("notices", { link });

  const patient = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true });
  const { page, id } = await openAsPatient(patient, link, env.PATIENT, true, true);
  const body = await page.textContent("#message pre.body");
  check(body.includes(env.SECRET), `the message in the portal: ${body}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "portal-03-message.png"), fullPage: true });
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#attachments a")]);
  const saved = path.join(ARTIFACTS, "portal-downloaded-attachment");
  await download.saveAs(saved);
  check(Buffer.compare(fs.readFileSync(saved), fs.readFileSync(env.ATTACHMENT)) === 0, "the portal's attachment differs");
  report("downloaded", { filename: download.suggestedFilename() });
  await page.fill("#reply textarea", env.REPLY_TEXT);
  await page.setInputFiles("#reply input[type=file]", env.REPLY_FILE);
  await Promise.all([page.waitForNavigation(), page.click("#reply button")]);
  const notice = await page.textContent(".notice");
  check(notice.includes("Your reply was sent"), `after replying: ${notice}`);
  const replies = await page.textContent("#replies");
  check(replies.includes(env.REPLY_TEXT), `the reply is not shown again: ${replies}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "portal-04-replied.png"), fullPage: true });
  report("replied", { id });

  // The patient chooses a password for return visits (a weak one is refused), and a new
  // browser opens the link with it instead of a code.
  await page.goto(`${BASE}/portal`);
  await page.fill("#new-password", "password1234");
  await page.fill("#confirm", "password1234");
  const weak = await Promise.all([page.waitForNavigation(), page.click('#password-form button')]);
  check(weak[0].status() === 422, `a weak portal password answered ${weak[0].status()}`);
  await page.goto(`${BASE}/portal`);
  await page.fill("#new-password", env.PORTAL_PASSWORD);
  await page.fill("#confirm", env.PORTAL_PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('#password-form button')]);
  check((await page.textContent(".notice")).includes("Your password is set"), "the portal password was not set");
  const codesBefore = sinkMessages().length;
  const later = await browser.newContext({ ignoreHTTPSErrors: true });
  const revisit = await later.newPage();
  await revisit.goto(link);
  await revisit.fill("#password", "not the password at all");
  const wrong = await Promise.all([revisit.waitForNavigation(), revisit.click("#with-password button")]);
  check(wrong[0].status() === 401, `a wrong portal password answered ${wrong[0].status()}`);
  await revisit.fill("#password", env.PORTAL_PASSWORD);
  await Promise.all([revisit.waitForNavigation(), revisit.click("#with-password button")]);
  check(revisit.url().endsWith(`/portal/${id}`), `after the password: ${revisit.url()}`);
  check((await revisit.textContent("#message pre.body")).includes(env.SECRET), "the return visit does not show the message");
  check(sinkMessages().length === codesBefore, "a code was mailed for a password sign-in");
  await later.close();
  report("password-visit");

  // The other patient proves their own address and reads their copy.
  const other = await browser.newContext({ ignoreHTTPSErrors: true });
  const second = await openAsPatient(other, otherLink, env.OTHER, false, false);
  check(second.id !== id, "both patients got the same pickup");
  report("other-opened", { id: second.id });

  // The first patient cannot open the other's message by putting its id in the address.
  const stolen = await page.goto(`${BASE}/portal/${second.id}`);
  check(stolen.status() === 403, `another patient's message answered ${stolen.status()}`);
  const stolenText = await page.textContent("main");
  check(!stolenText.includes(env.SECRET), "another patient's message was shown");
  const made = await page.goto(`${BASE}/portal/${"0".repeat(64)}`);
  check(made.status() === 404, `a made-up id answered ${made.status()}`);
  await page.goto(`${BASE}/portal`);
  check((await page.locator("#pickups tr").count()) === 2, "the portal lists more than the patient's own message");
  report("forbidden");

  // The clinician sees both opened, and withdraws the other patient's copy.
  let status = "";
  for (let i = 0; i < 100; i++) {
    await mail.goto(`${BASE}/sent/${queue[1]}`);
    status = await mail.textContent("#delivery");
    if ((status.match(/opened at/g) || []).length === 2) break;
    await sleep(200);
  }
  check((status.match(/opened at/g) || []).length === 2, `the delivery status: ${status}`);
  check(status.includes("Secure portal"), `the protection is not shown: ${status}`);
  await mail.screenshot({ path: path.join(ARTIFACTS, "compose-02-delivery-status.png"), fullPage: true });
  const otherRow = mail.locator(`#delivery tr:has-text("${env.OTHER}")`);
  await Promise.all([mail.waitForNavigation(), otherRow.locator("button.danger").click()]);
  const after = await mail.textContent("main");
  check(after.includes("Withdrawn"), `after withdrawing: ${after}`);
  check((await mail.locator(`#delivery tr:has-text("${env.OTHER}")`).textContent()).includes("withdrawn at"), "not marked withdrawn");
  const gone = await second.page.goto(`${BASE}/portal/${second.id}`);
  check(gone.status() === 410, `a withdrawn message answered ${gone.status()}`);
  await second.page.screenshot({ path: path.join(ARTIFACTS, "portal-05-withdrawn.png"), fullPage: true });
  report("withdrawn");

  // A draft: saved to Drafts, opened again, sent (to the clinician's own address), gone
  // from Drafts.
  await mail.goto(`${BASE}/compose`);
  await mail.fill("#to", env.DOC);
  await mail.fill("#subject", "Draft for the ward round");
  await mail.fill("#body", "first words");
  await Promise.all([mail.waitForNavigation(), mail.click('button[value="draft"]')]);
  check((await mail.textContent(".notice")).includes("Draft saved"), "the draft was not saved");
  const draftRow = mail.locator('#messages tr:has-text("Draft for the ward round")');
  check((await draftRow.count()) === 1, "the draft is not in Drafts");
  const drafts = mail.url().split("?")[0];
  await Promise.all([mail.waitForNavigation(), draftRow.locator("a").click()]);
  await Promise.all([mail.waitForNavigation(), mail.click("#edit-draft")]);
  check((await mail.inputValue("#to")) === env.DOC, `the draft's To: ${await mail.inputValue("#to")}`);
  check((await mail.inputValue("#body")).includes("first words"), "the draft's text");
  await mail.fill("#body", "first words, then more");
  await Promise.all([mail.waitForNavigation(), mail.click('button[value="send"]')]);
  check(mail.url().endsWith("/sent?done=sent"), `after sending the draft: ${mail.url()}`);
  await mail.goto(drafts);
  check((await mail.locator('#messages tr:has-text("Draft for the ward round")').count()) === 0, "the sent draft is still in Drafts");
  report("draft");

  // A file past the upload bound is refused with a clear page, and nothing is sent.
  await mail.goto(`${BASE}/compose`);
  await mail.fill("#to", env.PATIENT);
  await mail.fill("#subject", "Too big");
  await mail.setInputFiles("#files", env.BIG_FILE);
  const [big] = await Promise.all([mail.waitForNavigation(), mail.click('button[value="send"]')]);
  check(big.status() === 413, `an oversized upload answered ${big.status()}`);
  check((await mail.textContent("main")).includes("Not sent"), "the oversized upload's page");
  report("too-big");

  // Readable on a phone's width: the compose form and the portal's pages.
  for (const [p, url] of [[mail, `${BASE}/compose`], [mail, `${BASE}/sent/${queue[1]}`], [page, `${BASE}/portal/${id}`], [page, `${BASE}/portal`]]) {
    await p.setViewportSize({ width: 375, height: 800 });
    await p.goto(url);
    const wide = await p.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 376, `${url} is ${wide}px wide on a 375px screen`);
    await p.setViewportSize({ width: 1280, height: 800 });
  }
  report("phone");

  // Reply, reply all, forward: the forms fill in from the message.
  await mail.goto(`${BASE}/mail`);
  await Promise.all([mail.waitForNavigation(), mail.locator(`#messages tr:has-text("Re: ${env.SUBJECT}") a`).click()]);
  await Promise.all([mail.waitForNavigation(), mail.click("a#reply")]);
  check((await mail.inputValue("#to")) === env.PATIENT, `reply to: ${await mail.inputValue("#to")}`);
  check((await mail.inputValue("#subject")) === `Re: ${env.SUBJECT}`, "reply subject");
  check((await mail.inputValue("#body")).includes(`> ${env.REPLY_TEXT}`), "the reply does not quote");
  await mail.goBack();
  await Promise.all([mail.waitForNavigation(), mail.click("a#forward")]);
  check((await mail.inputValue("#subject")) === `Fwd: Re: ${env.SUBJECT}`, "forward subject");
  const carried = await mail.textContent("#carried");
  check(carried.includes(path.basename(env.REPLY_FILE)), `the forward does not carry the file: ${carried}`);
  // An unknown colleague is refused with the reason, the form kept; then the forward goes.
  await mail.fill("#to", "nobody@clinic.test");
  const [refused] = await Promise.all([mail.waitForNavigation(), mail.click('button[value="send"]')]);
  check(refused.status() === 422, `an unknown recipient answered ${refused.status()}`);
  const why = await mail.textContent(".error");
  check(why.includes("nobody@clinic.test") && why.includes("No such mailbox"), `the refusal: ${why}`);
  check((await mail.inputValue("#subject")) === `Fwd: Re: ${env.SUBJECT}`, "the form was not kept");
  await mail.fill("#to", env.DOC);
  await Promise.all([mail.waitForNavigation(), mail.click('button[value="send"]')]);
  check(mail.url().endsWith("/sent?done=sent"), `after forwarding: ${mail.url()}`);
  report("reply-forms");
  report("done");
} finally {
  await browser.close();
}
