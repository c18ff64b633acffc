// The identity pages in a real browser: Debian's chromium, headless, driven by playwright-core
// (no browser download). Run by tests/web.rs against the real sealpost binary.
//
//   BASE=https://localhost:PORT ADDRESS=… PASSWORD=… ARTIFACTS=dir node identity.mjs
//
// Each step prints one JSON line {"step": …, …}; the Rust test checks them. A screenshot of
// every page goes to ARTIFACTS. Exits non-zero at the first step that fails.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { report, check, launch } from "./lib.mjs";

const { BASE, ADDRESS, PASSWORD, ARTIFACTS } = process.env;
fs.mkdirSync(ARTIFACTS, { recursive: true });
let shot = 0;




async function screenshot(page, name) {
  shot += 1;
  await page.screenshot({ path: path.join(ARTIFACTS, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
}

// RFC 6238 with SHA-1, 6 digits, 30 s: what an authenticator app computes.
function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/[\s=]/g, "").toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function totp(secret, seconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(seconds / 30)));
  const mac = crypto.createHmac("sha1", secret).update(counter).digest();
  const offset = mac[19] & 15;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1000000).padStart(6, "0");
}

async function signInWithPassword(page) {
  await page.goto(`${BASE}/sign-in`);
  await screenshot(page, "sign-in");
  await page.fill("#address", ADDRESS);
  await page.fill("#password", PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-in"] button')]);
}

const browser = await launch();
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const scriptErrors = [];
  // Exceptions in our script, and anything the Content-Security-Policy blocked.
  page.on("pageerror", (e) => scriptErrors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) scriptErrors.push(m.text());
  });

  // 1. Password first: the account has no second factor, so only enrolment is open.
  await signInWithPassword(page);
  check(page.url().endsWith("/security"), `after the password: ${page.url()}`);
  check((await page.locator("#app-passwords").count()) === 0, "app passwords shown before enrolment");
  await screenshot(page, "enrolment");
  report("enrolment");

  // 2. Set up the authenticator app: QR code and key, then a code from it.
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/totp/start"] button')]);
  check((await page.locator(".qr svg").count()) === 1, "no QR code");
  const secret = base32(await page.textContent("#totp-secret"));
  await screenshot(page, "totp-setup");
  await page.fill("#totp-code", totp(secret, Date.now() / 1000));
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/totp/confirm"] button')]);
  check((await page.locator("#app-passwords").count()) === 1, "not signed in after enrolling TOTP");
  await screenshot(page, "security");
  report("totp-enrolled");

  // 3. Sign out, then sign in with password and TOTP (the next step's code: each is used once).
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-out"] button')]);
  check(page.url().endsWith("/sign-in"), `after sign-out: ${page.url()}`);
  await signInWithPassword(page);
  check(page.url().endsWith("/second-factor"), `after the password: ${page.url()}`);
  await screenshot(page, "second-factor");
  await page.fill("#code", "000000");
  await Promise.all([page.waitForNavigation(), page.click('form[action="/second-factor"] button >> nth=0')]);
  check((await page.locator(".error").count()) === 1, "a wrong code was not refused");
  await page.fill("#code", totp(secret, Date.now() / 1000 + 30));
  await Promise.all([page.waitForNavigation(), page.click('form[action="/second-factor"] button >> nth=0')]);
  check(page.url().endsWith("/security"), `after TOTP: ${page.url()}`);
  report("signed-in-with-totp");

  // 4. A passkey, with Chrome's virtual authenticator (user verification on).
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
    },
  });
  await page.fill("#passkey-name", "Virtual key");
  await Promise.all([
    page.waitForNavigation(),
    page.click('form[data-passkey="register"] button'),
  ]);
  await page.waitForSelector("#passkeys td:has-text('Virtual key')");
  await screenshot(page, "passkey-added");
  report("passkey-added");

  // 5. Recovery codes, shown once.
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/recovery"] button')]);
  const codes = await page.locator("#recovery-codes li").allTextContents();
  check(codes.length === 10, `recovery codes: ${codes.length}`);
  await screenshot(page, "recovery-codes");
  report("recovery-codes", { count: codes.length });

  // 5b. A recovery code instead of the second factor: once, and only once.
  for (const attempt of ["first", "again"]) {
    await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-out"] button')]);
    await signInWithPassword(page);
    await page.fill("#recovery", codes[0]);
    await Promise.all([page.waitForNavigation(), page.click('form[action="/second-factor"] button >> nth=1')]);
    if (attempt === "first") {
      check(page.url().endsWith("/security"), `a recovery code did not sign in: ${page.url()}`);
    } else {
      check(page.url().endsWith("/second-factor"), `a used recovery code signed in: ${page.url()}`);
      // (A TOTP code would have to wait for the next 30-second step: each is used once.)
      await page.fill("#recovery", codes[1]);
      await Promise.all([page.waitForNavigation(), page.click('form[action="/second-factor"] button >> nth=1')]);
      check(page.url().endsWith("/security"), `after the second code: ${page.url()}`);
    }
  }
  report("recovery-code-once");

  // 5c. A recovery code signs in, but it is not the account's strongest factor (it has a
  // passkey now): changes to factors and app passwords first ask for the passkey.
  check((await page.locator("#app-name").count()) === 0, "an app password offered after a recovery code");
  await page.goto(`${BASE}/reauth`);
  check((await page.locator('input[name="password"]').count()) === 0, "the password offered to confirm");
  await Promise.all([page.waitForNavigation(), page.click('form[data-passkey="sign-in"] button')]);
  check(page.url().endsWith("/security"), `confirming with the passkey: ${page.url()}`);
  report("confirmed-with-passkey");

  // 6. An app password for the mail client, shown once.
  await page.fill("#app-name", "Browser test client");
  await page.selectOption("#app-scope", "both");
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/app-passwords"] button')]);
  const appPassword = (await page.textContent("#app-password")).trim();
  check(appPassword.replace(/ /g, "").length === 24, `app password: ${appPassword}`);
  await screenshot(page, "app-password");
  report("app-password", { password: appPassword });

  // 6b. A weak new password is refused with the reason; a strong one is taken.
  await page.fill("#new-password", "leavemealone");
  await page.fill("#new-password-again", "leavemealone");
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/password"] button')]);
  const weak = (await page.textContent(".error")) || "";
  check(weak.includes("common"), `weak password: ${weak}`);
  await screenshot(page, "weak-password");
  await page.fill("#new-password", `${PASSWORD} ferry`);
  await page.fill("#new-password-again", `${PASSWORD} ferry`);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/password"] button')]);
  check(((await page.textContent(".notice")) || "").includes("changed"), "the password was not changed");
  report("password-changed", { password: `${PASSWORD} ferry` });

  // 7. Every form refuses a request without this session's CSRF token, and changes nothing.
  const forms = [
    "/security/totp/start",
    "/security/totp/confirm",
    "/security/totp/remove",
    "/security/recovery",
    "/security/password",
    "/security/passkeys/remove",
    "/security/app-passwords",
    "/security/app-passwords/revoke",
    "/security/sessions/end",
    "/security/sessions/end-all",
    "/sign-out",
    "/reauth",
    "/second-factor",
    "/sign-in",
  ];
  const refused = [];
  for (const url of forms) {
    const response = await page.request.post(`${BASE}${url}`, {
      form: { csrf: "forged", name: "x", scope: "both", id: "x", session: "x", code: "1", password: "x", again: "x", address: ADDRESS },
      maxRedirects: 0,
    });
    refused.push([url, response.status()]);
  }
  for (const url of ["/security/passkeys/start", "/security/passkeys/finish", "/passkey/sign-in/start", "/passkey/sign-in/finish"]) {
    const response = await page.request.post(`${BASE}${url}`, {
      data: { name: "x", address: ADDRESS, ceremony: "x", credential: {} },
      headers: { "X-CSRF-Token": "forged" },
      maxRedirects: 0,
    });
    refused.push([url, response.status()]);
  }
  await page.goto(`${BASE}/security`);
  check((await page.locator("#app-passwords td:has-text('Browser test client')").count()) === 1, "a forged form changed something");
  check((await page.locator("#passkeys td:has-text('Virtual key')").count()) === 1, "a forged form removed the passkey");
  report("csrf", { refused });

  // 8. Sign out, then the passkey alone signs in. An address without a passkey gets an answer
  // of the same shape (it does not tell which addresses have passkeys), and the browser finds
  // no key for it.
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-out"] button')]);
  await page.goto(`${BASE}/sign-in`);
  const token = await page.getAttribute('meta[name="csrf"]', "content");
  const shapes = [];
  for (const address of [ADDRESS, "nobody@clinic.test"]) {
    const response = await page.request.post(`${BASE}/passkey/sign-in/start`, {
      data: { address },
      headers: { "X-CSRF-Token": token },
    });
    const body = await response.json();
    shapes.push([response.status(), Object.keys(body).sort().join(","), body.options.publicKey.allowCredentials.length]);
  }
  check(JSON.stringify(shapes[0]) === JSON.stringify(shapes[1]), `answers differ: ${JSON.stringify(shapes)}`);
  await page.fill("#passkey-address", "nobody@clinic.test");
  await page.click('form[data-passkey="sign-in"] button');
  await page.waitForSelector('form[data-passkey="sign-in"] .passkey-status:has-text("did not work")');
  check(page.url().endsWith("/sign-in"), `an address without passkeys signed in: ${page.url()}`);
  report("decoy", { shapes });
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#passkey-address", ADDRESS);
  await Promise.all([
    page.waitForURL(/\/security/),
    page.click('form[data-passkey="sign-in"] button'),
  ]);
  await screenshot(page, "signed-in-with-passkey");
  const recent = await page.locator("#sign-ins td").allTextContents();
  check(recent.some((t) => t.includes("passkey")), `recent sign-ins: ${recent}`);
  report("signed-in-with-passkey");

  // 9. A copied session cookie stops working after "sign out everywhere".
  const stolen = (await context.cookies()).filter((c) => c.name === "__Host-sp_session");
  check(stolen.length === 1, "no session cookie");
  const thief = await browser.newContext({ ignoreHTTPSErrors: true });
  await thief.addCookies(stolen);
  const thiefPage = await thief.newPage();
  await thiefPage.goto(`${BASE}/security`);
  check(thiefPage.url().endsWith("/security"), "the copied cookie did not work before");
  await Promise.all([page.waitForNavigation(), page.click('form[action="/security/sessions/end-all"] button')]);
  check(page.url().endsWith("/sign-in"), `after sign out everywhere: ${page.url()}`);
  await thiefPage.goto(`${BASE}/security`);
  check(thiefPage.url().endsWith("/sign-in"), `the copied cookie still works: ${thiefPage.url()}`);
  await screenshot(thiefPage, "stolen-cookie-refused");
  report("signed-out-everywhere");

  check(scriptErrors.length === 0, `script errors: ${scriptErrors.join(" | ")}`);
  report("done");
} finally {
  await browser.close();
}
