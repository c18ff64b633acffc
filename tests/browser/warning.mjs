// The webmail's impersonation banner and the quarantine digest (tests/spam.rs): ADDRESS
// signs in with PASSWORD; the message SUBJECT shows the warning, the message PLAIN does not;
// the digest lists the message HELD_FROM sent.

import path from "node:path";
import { report, check, launch } from "./lib.mjs";

const { BASE, ADDRESS, PASSWORD, SUBJECT, PLAIN, HELD_FROM, ARTIFACTS } = process.env;

const browser = await launch();
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#address", ADDRESS);
  await page.fill("#password", PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-in"] button')]);
  await page.goto(`${BASE}/mail`);
  const inbox = page.url();
  await Promise.all([page.waitForNavigation(), page.locator(`#messages tr:has-text("${SUBJECT}") a`).click()]);
  const warning = (await page.locator("#impersonation-warning").textContent()) || "";
  check(warning.includes("comes from outside the organisation") && warning.includes("looks like clinic.test"), `the banner: ${warning}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-06-impersonation.png"), fullPage: true });
  await page.goto(inbox);
  await Promise.all([page.waitForNavigation(), page.locator(`#messages tr:has-text("${PLAIN}") a`).click()]);
  check((await page.locator("#impersonation-warning").count()) === 0, "a banner on an honest message");
  report("warned");
  await page.goto(inbox);
  await Promise.all([page.waitForNavigation(), page.click("#quarantine-link")]);
  const digest = (await page.textContent("#quarantine")) || "";
  check(digest.includes(HELD_FROM), `the digest: ${digest}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-07-quarantine.png"), fullPage: true });
  report("digest");
} finally {
  await browser.close();
}
