// An admin in a real browser: the password alone is not enough (admins always need a
// passkey), so the first sign-in enrols one with Chrome's virtual authenticator; then the
// admin lifts a lockout. Run by tests/web.rs.
//
//   BASE=… ADDRESS=… PASSWORD=… LOCKED=… ARTIFACTS=dir node admin.mjs
//
// With MODE=accounts, instead: the admin creates NEW_ADDRESS, whose owner follows the
// enrolment link, chooses NEW_PASSWORD and signs in; an IMAP session of theirs (Python's
// imaplib, in IDLE; CAFILE, IMAP_PORT) ends the moment the admin disables the account; then
// the admin deletes it, after a wrong confirmation is refused.

import { spawn } from "node:child_process";
import fs from "node:fs";
import readline from "node:readline";
import path from "node:path";
import { report, check, launch } from "./lib.mjs";

const { BASE, ADDRESS, PASSWORD, LOCKED, ARTIFACTS } = process.env;
fs.mkdirSync(ARTIFACTS, { recursive: true });



/// Submits a message as DOC over implicit TLS with smtplib; prints "sent" or the refusal.
const SUBMIT = `
import os, smtplib, ssl
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])
s = smtplib.SMTP_SSL('localhost', int(os.environ['SUBMISSION_PORT']), context=ctx)
s.login(os.environ['DOC'], os.environ['DOC_PASSWORD'])
try:
    s.sendmail(os.environ['DOC'], ['pat@patient.test'], ('From: ' + os.environ['DOC'] + '\\r\\nTo: pat@patient.test\\r\\nSubject: Results\\r\\n\\r\\nThe word is BLOCKWORD.\\r\\n').encode())
    print('sent')
except smtplib.SMTPDataError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
s.quit()
`;

/// Sends as DOC with MAIL FROM and From `from`, to `to`; prints "sent" or the refusal's code.
const SEND = `
import os, smtplib, ssl
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])
s = smtplib.SMTP_SSL('localhost', int(os.environ['SUBMISSION_PORT']), context=ctx)
s.login(os.environ['DOC'], os.environ['DOC_PASSWORD'])
try:
    s.sendmail(os.environ['FROM'], [os.environ['TO']], ('From: ' + os.environ['FROM'] + '\\r\\nTo: ' + os.environ['TO'] + '\\r\\nSubject: On call\\r\\n\\r\\nWho is on call?\\r\\n').encode())
    print('sent')
except smtplib.SMTPRecipientsRefused as e:
    print('refused', list(e.recipients.values())[0][0])
except smtplib.SMTPSenderRefused as e:
    print('refused', e.smtp_code)
s.quit()
`;

/// APPENDs a small message to DOC's INBOX over IMAP; prints the answer.
const APPEND = `
import imaplib, os, ssl
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])
m = imaplib.IMAP4_SSL('localhost', int(os.environ['IMAP_PORT']), ssl_context=ctx, timeout=30)
m.login(os.environ['DOC'], os.environ['DOC_PASSWORD'])
try:
    appended = m.append('INBOX', None, None, b'Subject: note\\r\\n\\r\\nA note.\\r\\n')
except imaplib.IMAP4.error as e:
    appended = ('NO', str(e))
m.select('INBOX')
print('APPEND', appended, 'COPY', m.copy('1', 'INBOX'))
`;

function send(from, to) {
  const child = spawn("/usr/bin/python3", ["-c", SEND], { env: { ...process.env, FROM: from, TO: to }, stdio: ["ignore", "pipe", "inherit"] });
  return lines(child)(20000);
}

function submitAsDoc() {
  const child = spawn("/usr/bin/python3", ["-c", SUBMIT], { env: process.env, stdio: ["ignore", "pipe", "inherit"] });
  return lines(child)(20000);
}

/// An IMAP sign-in with a wrong password; prints "refused".
const WRONG_LOGIN = `
import imaplib, os, ssl
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])
m = imaplib.IMAP4_SSL('localhost', int(os.environ['IMAP_PORT']), ssl_context=ctx, timeout=30)
try:
    m.login(os.environ['DOC'], 'not the password')
    print('accepted')
except imaplib.IMAP4.error:
    print('refused')
`;

/// An IMAP client that idles, then prints what ended the idling.
const IDLE_CLIENT = `
import imaplib, os, ssl
ctx = ssl.create_default_context(cafile=os.environ['CAFILE'])
m = imaplib.IMAP4_SSL('localhost', int(os.environ['IMAP_PORT']), ssl_context=ctx, timeout=30)
m.login(os.environ['NEW_ADDRESS'], os.environ['NEW_PASSWORD'])
m.select('INBOX')
m.send(m._new_tag() + b' IDLE\\r\\n')
print(m.readline().decode().strip(), flush=True)
print('then ' + m.readline().decode().strip(), flush=True)
`;

/// A page in a context of its own with Chrome's virtual authenticator.
async function passkeyPage(browser) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
  });
  return page;
}

/// Registers a passkey on the account security page the page shows.
async function addPasskey(page, name) {
  await page.fill("#passkey-name", name);
  await Promise.all([page.waitForNavigation(), page.click('form[data-passkey="register"] button')]);
  await page.waitForSelector(`#passkeys td:has-text('${name}')`);
}

const browser = await launch();
try {
  const page = await passkeyPage(browser);
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#address", ADDRESS);
  await page.fill("#password", PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-in"] button')]);
  check(page.url().endsWith("/security"), `after the password: ${page.url()}`);
  // Only a passkey will do: no authenticator app offered, and no admin page yet.
  check((await page.locator("#totp").count()) === 0, "an admin was offered TOTP");
  const early = await page.request.get(`${BASE}/admin/lockouts`, { maxRedirects: 0 });
  check(early.status() === 303, `the admin page before a passkey: ${early.status()}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-01-enrolment.png"), fullPage: true });
  report("admin-enrolment");

  await addPasskey(page, "Admin key");
  report("admin-passkey");

  if (process.env.MODE === "accounts") {
    await accounts(browser, page);
    process.exit(0);
  }

  await page.goto(`${BASE}/admin/lockouts`);
  check((await page.locator(`#lockouts td:has-text('${LOCKED}')`).count()) === 1, `${LOCKED} not listed as locked`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-02-lockouts.png"), fullPage: true });
  await Promise.all([page.waitForNavigation(), page.click('form[action="/admin/lockouts/lift"] button')]);
  check(((await page.textContent(".notice")) || "").includes("lifted"), "no lifted notice");
  check((await page.locator(`#lockouts td:has-text('${LOCKED}')`).count()) === 0, `${LOCKED} still listed`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-03-lifted.png"), fullPage: true });
  report("lifted");
} finally {
  await browser.close();
}

/// Lines from a child process's standard output, one at a time (at most `ms` each).
function lines(child) {
  const reader = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return async (ms) => {
    const timeout = new Promise((resolve) => setTimeout(() => resolve({ value: null }), ms));
    const next = await Promise.race([reader.next(), timeout]);
    return next.value;
  };
}


async function accounts(browser, page) {
  const { NEW_ADDRESS, NEW_PASSWORD } = process.env;
  await page.goto(`${BASE}/admin/accounts`);
  await page.fill("#address", NEW_ADDRESS);
  await page.fill("#display_name", "Nina Nurse");
  await Promise.all([page.waitForNavigation(), page.click("#new-account button")]);
  const link = (await page.textContent("#enrolment-link")).trim();
  check(link.startsWith(`${BASE}/enrol/`), `the enrolment link: ${link}`);
  const id = link.split("/enrol/")[1].split(".")[0];
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-04-account-created.png"), fullPage: true });
  report("created", { id });

  // The owner follows the link: a weak password is refused, a good one is set, once.
  const owner = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  await owner.goto(link);
  await owner.fill("#password", "password1234");
  await owner.fill("#confirm", "password1234");
  const [weak] = await Promise.all([owner.waitForNavigation(), owner.click("#enrol button")]);
  check(weak.status() === 422, `a weak password answered ${weak.status()}`);
  await owner.fill("#password", NEW_PASSWORD);
  await owner.fill("#confirm", NEW_PASSWORD);
  await Promise.all([owner.waitForNavigation(), owner.click("#enrol button")]);
  check((await owner.textContent("main")).includes("Your password is set"), "the password was not set");
  const again = await owner.goto(link);
  check(again.status() === 410, `a used enrolment link answered ${again.status()}`);
  await owner.goto(`${BASE}/sign-in`);
  await owner.fill("#address", NEW_ADDRESS);
  await owner.fill("#password", NEW_PASSWORD);
  await Promise.all([owner.waitForNavigation(), owner.click('form[action="/sign-in"] button')]);
  check(!owner.url().includes("/sign-in"), `the owner's sign-in: ${owner.url()}`);
  report("enrolled");

  // The owner's mail client idles; the admin disables the account; the session ends at once.
  const client = spawn("/usr/bin/python3", ["-c", IDLE_CLIENT], { env: process.env, stdio: ["ignore", "pipe", "inherit"] });
  const next = lines(client);
  const idling = await next(20000);
  check(idling && idling.startsWith("+"), `the IMAP client did not idle: ${idling}`);
  await page.goto(`${BASE}/admin/accounts/${id}`);
  await Promise.all([page.waitForNavigation(), page.click('button[value="disable"]')]);
  const notice = await page.textContent(".notice");
  check(notice.includes("1 mail sessions were ended"), `after disabling: ${notice}`);
  check((await page.textContent("#status")) === "disabled", "not shown as disabled");
  const bye = await next(10000);
  check(bye && bye.includes("BYE [UNAVAILABLE]"), `the idling session got: ${bye}`);
  client.kill();
  await owner.goto(`${BASE}/security`);
  check(owner.url().endsWith("/sign-in"), `the disabled owner's web session: ${owner.url()}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-05-disabled.png"), fullPage: true });
  report("disabled");

  // Deleting takes the address typed out.
  await page.fill("#confirm", "someone.else@clinic.test");
  const [refused] = await Promise.all([page.waitForNavigation(), page.click("#delete button")]);
  check(refused.status() === 422, `a wrong confirmation answered ${refused.status()}`);
  await page.goto(`${BASE}/admin/accounts/${id}`);
  await page.fill("#confirm", NEW_ADDRESS);
  await Promise.all([page.waitForNavigation(), page.click("#delete button")]);
  check((await page.locator(`#accounts td:has-text("${NEW_ADDRESS}")`).count()) === 0, "the account is still listed");
  const gone = await page.goto(`${BASE}/admin/accounts/${id}`);
  check(gone.status() === 404, `a deleted account's page answered ${gone.status()}`);
  report("deleted");

  // The queue shows the message that cannot be delivered, and why; tracing finds it by its
  // Message-ID; the admin retries it, then deletes it.
  await page.goto(`${BASE}/admin/queue`);
  const waiting = await page.textContent("#queue");
  check(waiting.includes(process.env.STUCK_TO) && waiting.includes("waiting"), `the queue: ${waiting}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-06-queue.png"), fullPage: true });
  await page.goto(`${BASE}/admin/trace?message_id=${process.env.TRACE_ID}`);
  const traced = await page.textContent("#traced");
  check(traced.includes(process.env.STUCK_TO) && traced.includes(process.env.TRACE_ID), `the trace: ${traced}`);
  check(!traced.includes(process.env.STUCK_SUBJECT), "the trace shows the subject");
  await page.goto(`${BASE}/admin/trace?message_id=no-such-message`);
  check((await page.locator("#traced tr").count()) === 1, "a trace for an unknown Message-ID found something");
  await page.goto(`${BASE}/admin/queue`);
  await Promise.all([page.waitForNavigation(), page.click('#queue button[value="retry"]')]);
  check((await page.textContent(".notice")).includes("tried again"), "no retry notice");
  await Promise.all([page.waitForNavigation(), page.click('#queue button[value="delete"]')]);
  check((await page.textContent(".notice")).includes("deleted"), "no delete notice");
  check((await page.locator("#queue tr").count()) === 1, "the queue is not empty after the delete");
  report("queue");

  // An admin is not a mailbox reader: no address of the web application shows an admin
  // another account's message (the web's mail addresses name the signed-in account's own
  // folders; the console shows no subject or content).
  const urls = ["/admin/accounts", "/admin/queue", "/admin/trace?sender=doc", "/sent", "/portal", "/mail"];
  for (let a = 1; a <= 4; a++) urls.push(`/admin/accounts/${a}`);
  for (let m = 1; m <= 8; m++) {
    urls.push(`/mail/${m}`);
    for (let u = 1; u <= 3; u++) {
      for (const tail of ["", "/html", "/html?images=1", "/attachment/0"]) urls.push(`/mail/${m}/${u}${tail}`);
      urls.push(`/compose?reply=${m}/${u}`, `/compose?forward=${m}/${u}`, `/compose?draft=${m}/${u}`);
    }
  }
  for (const url of urls) {
    const answer = await page.request.get(`${BASE}${url}`, { maxRedirects: 0 });
    const body = await answer.text();
    for (const marker of [process.env.STUCK_SUBJECT, process.env.STUCK_BODY]) {
      check(!body.includes(marker), `${url} showed the admin another account's message (${answer.status()})`);
    }
  }
  report("no-mail-for-admins", { urls: urls.length });

  // Every console form refuses a forged CSRF token, and changes nothing.
  const forged = [
    ["/admin/accounts", { csrf: "forged", address: "mallory@clinic.test", role: "admin" }],
    ["/admin/accounts/1/act", { csrf: "forged", action: "disable" }],
    ["/admin/queue", { csrf: "forged", id: "0".repeat(32), action: "delete" }],
    ["/admin/policies", { csrf: "forged", rules: "" }],
    ["/admin/policies/test", { csrf: "forged", text: "x" }],
    ["/admin/audit/verify", { csrf: "forged" }],
    ["/admin/lockouts/lift", { csrf: "forged", login: "x@clinic.test" }],
  ];
  for (const [url, form] of forged) {
    const answer = await page.request.post(`${BASE}${url}`, { form, maxRedirects: 0 });
    check(answer.status() === 403, `${url} took a forged form: ${answer.status()}`);
  }
  await page.goto(`${BASE}/admin/accounts?q=mallory`);
  check((await page.locator("#accounts tr").count()) === 1, "a forged form created an account");
  report("csrf");

  // The audit log: a search finds the test's events; the export holds exactly the lines the
  // search counted; the chain verifies.
  await page.goto(`${BASE}/admin/audit?actor=${ADDRESS}&action=account.`);
  const count = Number((await page.textContent("#audit-count")).match(/(\d+) records/)[1]);
  const listed = await page.textContent("#audit");
  for (const action of ["account.create", "account.disable", "account.delete"]) {
    check(listed.includes(action), `the audit search misses ${action}: ${listed}`);
  }
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-07-audit.png"), fullPage: true });
  const exported = await page.request.get(`${BASE}/admin/audit/export?format=jsonl&actor=${ADDRESS}&action=account.`);
  const records = (await exported.text()).trim().split("\n").map((l) => JSON.parse(l));
  check(records.length === count, `the export has ${records.length} lines, the search counted ${count}`);
  check(records.every((r) => r.actor === ADDRESS && r.action.startsWith("account.")), "the export holds other records");
  const csv = await (await page.request.get(`${BASE}/admin/audit/export?format=csv&actor=${ADDRESS}&action=account.`)).text();
  check(csv.trim().split("\r\n").length === count + 1, "the CSV export's lines differ");
  await Promise.all([page.waitForNavigation(), page.click("#verify button")]);
  const verified = await page.textContent(".notice");
  check(verified.includes("The chain holds"), `verify chain: ${verified}`);
  report("audit", { count });

  // An auditor reads the audit log and nothing else of the console.
  const auditor = await passkeyPage(browser);
  await auditor.goto(`${BASE}/sign-in`);
  await auditor.fill("#address", process.env.AUDITOR);
  await auditor.fill("#password", PASSWORD);
  await Promise.all([auditor.waitForNavigation(), auditor.click('form[action="/sign-in"] button')]);
  check((await auditor.locator("#totp").count()) === 0, "an auditor was offered TOTP");
  await addPasskey(auditor, "Auditor key");
  const reads = await auditor.goto(`${BASE}/admin/audit?action=audit.export`);
  check(reads.status() === 200, `the auditor's audit page: ${reads.status()}`);
  check((await auditor.textContent("#audit")).includes("audit.export"), "the auditor does not see the export's record");
  for (const url of ["/admin/accounts", "/admin/queue", "/admin/trace", "/admin/lockouts", "/admin/holds", "/admin/retention", "/admin/quarantine"]) {
    const answer = await auditor.request.get(`${BASE}${url}`, { maxRedirects: 0 });
    check(answer.status() === 403, `an auditor opened ${url}: ${answer.status()}`);
  }
  const form = await auditor.request.post(`${BASE}/admin/accounts`, {
    form: { csrf: "x", address: "mallory@clinic.test", role: "admin" },
    maxRedirects: 0,
  });
  check(form.status() === 403, `an auditor posted a new account: ${form.status()}`);
  // eDiscovery shows subjects and exports whole messages: an admin action, not an auditor's.
  const discovery = await auditor.request.get(`${BASE}/admin/discovery?subject=a`, { maxRedirects: 0 });
  check(discovery.status() === 403, `an auditor opened eDiscovery: ${discovery.status()}`);
  report("auditor");

  // A policy change alters the next decision, at once: a message with BLOCKWORD goes, then
  // the admin adds a rule that blocks it, and the same message is refused.
  check((await submitAsDoc()) === "sent", "the first message was not accepted");
  await page.goto(`${BASE}/admin/policies`);
  check((await page.textContent("#policy-version")).includes("Version 0"), "a fresh store has a saved policy");
  const rules = await page.inputValue("#rules");
  await page.fill("#rules", rules + "\n[[content]]\nname = \"blockword\"\ndetector = \"keywords\"\nwords = [\"BLOCKWORD\"]\naction = \"block\"\n");
  await Promise.all([page.waitForNavigation(), page.click("#policy-form button")]);
  check((await page.textContent(".notice")).includes("Saved as version 1"), `saving the policy: ${await page.textContent("main")}`);
  await page.fill("#sample", "the BLOCKWORD is here");
  await Promise.all([page.waitForNavigation(), page.click("#policy-test button")]);
  check((await page.textContent("#findings")).includes("blockword"), "the sample text does not match the new rule");
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-08-policy.png"), fullPage: true });
  const blocked = await submitAsDoc();
  check(blocked.startsWith("refused 550") && blocked.includes("blockword"), `after the change: ${blocked}`);
  // Rules that do not compile change nothing.
  await page.fill("#rules", "[[content]]\nname = \"bad\"\ndetector = \"mrn\"\npatterns = [\"(unclosed\"]\naction = \"portal\"\n");
  const [bad] = await Promise.all([page.waitForNavigation(), page.click("#policy-form button")]);
  check(bad.status() === 422, `bad rules answered ${bad.status()}`);
  check((await page.textContent("#policy-version")).includes("Version 1"), "bad rules changed the version");
  check((await submitAsDoc()).startsWith("refused 550"), "bad rules changed the rules in force");
  report("policy");

  // Health: listeners, the certificate's expiry, the store, the queue, failures, and which
  // DNS records are published (the test's DNS server has only the MX). First a refused
  // IMAP sign-in, for the count.
  const wrong = spawn("/usr/bin/python3", ["-c", WRONG_LOGIN], { env: process.env, stdio: ["ignore", "pipe", "inherit"] });
  check((await lines(wrong)(20000)) === "refused", "a wrong IMAP password was not refused");
  await page.goto(`${BASE}/admin/health`);
  check((await page.textContent("#listeners")).includes("imaps"), "no listeners shown");
  const certificate = await page.textContent("#certificate");
  check(certificate.includes("localhost") && certificate.includes("days left"), `the certificate: ${certificate}`);
  check(/The store takes [0-9.]+ (KB|MB)/.test(await page.textContent("#store-size")), "no store size");
  check((await page.textContent("#queue-depth")).startsWith("Queue:"), "no queue depth");
  const filter = await page.textContent("#spam-filter");
  check(filter.includes("Spam filter: off"), `the spam filter line: ${filter}`);
  check(/[1-9][0-9]* refused sign-ins/.test(await page.textContent("#sign-in-failures")), "the refused sign-ins are not counted");
  const mx = await page.textContent('#dns tr:has-text("clinic.test MX")');
  check(mx.includes("published"), `the MX record: ${mx}`);
  const dmarc = await page.textContent('#dns tr:has-text("_dmarc.clinic.test TXT")');
  check(dmarc.includes("missing"), `the DMARC record: ${dmarc}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-09-health.png"), fullPage: true });
  report("health");

  // Aliases: one added to doc's account reaches doc, who may send as it, at once; a foreign
  // domain or an account's own address is refused; removed, it reaches nobody.
  await page.goto(`${BASE}/admin/accounts?q=doc`);
  await Promise.all([page.waitForNavigation(), page.click(`#accounts a:has-text("${process.env.DOC}")`)]);
  const docPage = page.url();
  for (const bad of ["oncall@elsewhere.test", process.env.DOC]) {
    await page.fill("#alias", bad);
    const [refusedAlias] = await Promise.all([page.waitForNavigation(), page.click("#alias-add button")]);
    check(refusedAlias.status() === 422, `the alias ${bad} answered ${refusedAlias.status()}`);
    await page.goto(docPage);
  }
  check((await send(process.env.DOC, "oncall@clinic.test")).startsWith("refused 550"), "oncall@ reached someone before it existed");
  await page.fill("#alias", "OnCall@clinic.test");
  await Promise.all([page.waitForNavigation(), page.click("#alias-add button")]);
  check((await page.textContent("#aliases")).includes("oncall@clinic.test"), "the alias is not listed");
  check((await send(process.env.DOC, "oncall@clinic.test")) === "sent", "mail to the alias was refused");
  check((await send("oncall@clinic.test", "pat@patient.test")) === "sent", "doc may not send as the alias");
  await Promise.all([page.waitForNavigation(), page.click('#aliases button[value="alias-remove"]')]);
  check((await send(process.env.DOC, "oncall@clinic.test")).startsWith("refused 550"), "the removed alias still reaches doc");
  report("aliases");

  // A quota below what doc stores: SMTP answers 452, IMAP APPEND and COPY NO [OVERQUOTA]; lifted,
  // mail flows again.
  await page.goto(docPage);
  await page.fill("#quota_mb", "0.0001");
  await Promise.all([page.waitForNavigation(), page.click("#quota-set button")]);
  check((await page.textContent(".notice")).includes("The quota is 104 bytes"), `setting the quota: ${await page.textContent("main")}`);
  check((await page.textContent("#quota")).includes("used of 0.0 MB"), `the quota line: ${await page.textContent("#quota")}`);
  check((await send(process.env.DOC, process.env.DOC)) === "refused 452", "mail to a full mailbox was not refused with 452");
  const appended = spawn("/usr/bin/python3", ["-c", APPEND], { env: process.env, stdio: ["ignore", "pipe", "inherit"] });
  const append = await lines(appended)(20000);
  check(append && /^APPEND \('NO'.*OVERQUOTA.* COPY \('NO'.*OVERQUOTA/.test(append), `APPEND and COPY in a full mailbox: ${append}`);
  await page.fill("#quota_mb", "");
  await Promise.all([page.waitForNavigation(), page.click("#quota-set button")]);
  check((await send(process.env.DOC, process.env.DOC)) === "sent", "mail after the quota was lifted was refused");
  report("quota");

  // A legal hold on doc, then eDiscovery finds doc's mail and exports it encrypted.
  await page.goto(`${BASE}/admin/holds`);
  await page.fill('#open-hold input[name="name"]', "Case 9");
  await page.fill('#open-hold input[name="reason"]', "a patient's complaint");
  await Promise.all([page.waitForNavigation(), page.click("#open-hold button")]);
  check((await page.textContent(".notice")).includes("Hold 1 is open"), `opening a hold: ${await page.textContent("main")}`);
  await page.fill('.add-custodian input[name="address"]', process.env.DOC);
  await Promise.all([page.waitForNavigation(), page.click(".add-custodian button")]);
  check((await page.textContent(".notice")).includes(`${process.env.DOC} is under hold 1`), `adding a custodian: ${await page.textContent("main")}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-10-holds.png"), fullPage: true });
  await page.goto(`${BASE}/admin/retention`);
  await Promise.all([page.waitForNavigation(), page.click('button[value="dry-run"]')]);
  check((await page.textContent("#sweep")).includes("0 messages would be destroyed"), `the dry run: ${await page.textContent("main")}`);
  await page.goto(`${BASE}/admin/discovery?held_only=on&subject=STUCKSUBJECT`);
  const counted = await page.textContent("#discovery-count");
  check(counted.includes("1 messages match"), `the discovery count: ${counted}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "admin-11-discovery.png"), fullPage: true });
  await page.fill('#discovery-export input[name="encrypt_to"]', process.env.RECIPIENT);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#discovery-export button")]);
  const saved = path.join(ARTIFACTS, "ediscovery.zip.age");
  await download.saveAs(saved);
  report("discovery", { file: saved });

  // The quarantine pages answer (what fills them is tests/spam.rs's).
  const held = await page.goto(`${BASE}/admin/quarantine`);
  check(held.status() === 200 && (await page.locator("#quarantine").count()) === 1, `the console's quarantine: ${held.status()}`);
  const digest = await page.goto(`${BASE}/quarantine`);
  check(digest.status() === 200 && (await page.textContent("main")).includes("0 messages the spam filter held"), `the quarantine digest: ${digest.status()}`);
  report("quarantine-pages");
}
