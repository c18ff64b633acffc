// An admin in a real browser: the password alone is not enough (admins always need a
// passkey), so the first sign-in enrols one with Chrome's virtual authenticator; then the
// admin lifts a lockout. Run by tests/web.rs.
//
//   BASE=… ADDRESS=… PASSWORD=… LOCKED=… ARTIFACTS=dir node admin.mjs

import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const { BASE, ADDRESS, PASSWORD, LOCKED, ARTIFACTS } = process.env;
fs.mkdirSync(ARTIFACTS, { recursive: true });

function report(step, fields = {}) {
  console.log(JSON.stringify({ step, ...fields }));
}

function check(condition, message) {
  if (!condition) {
    console.error(message);
    process.exit(1);
  }
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu"] });
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
  });

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

  await page.fill("#passkey-name", "Admin key");
  await Promise.all([page.waitForNavigation(), page.click('form[data-passkey="register"] button')]);
  await page.waitForSelector("#passkeys td:has-text('Admin key')");
  report("admin-passkey");

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
