// Reading mail on the web: the folder list, a message in the list (unread until opened), the
// message's text, and its attachment downloaded with the same bytes. Run by tests/web.rs.
//
//   BASE=… ADDRESS=… PASSWORD=… SUBJECT=… TEXT=… ATTACHMENT=file ARTIFACTS=dir node mail.mjs

import fs from "node:fs";
import path from "node:path";
import { report, check, launch } from "./lib.mjs";

const { BASE, ADDRESS, PASSWORD, SUBJECT, TEXT, ATTACHMENT, ARTIFACTS } = process.env;
fs.mkdirSync(ARTIFACTS, { recursive: true });



const browser = await launch();
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true });
  const page = await context.newPage();
  await page.goto(`${BASE}/sign-in`);
  await page.fill("#address", ADDRESS);
  await page.fill("#password", PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/sign-in"] button')]);
  await page.goto(`${BASE}/`);
  check(/\/mail\/\d+$/.test(page.url()), `home is not the inbox: ${page.url()}`);
  const brand = await page.textContent("header .brand");
  check(brand.includes("Lakeside Clinic"), `brand: ${brand}`);
  const logoWidth = await page.locator("header img.logo").evaluate((img) => img.naturalWidth);
  check(logoWidth > 0, "the logo did not load");
  const folders = await page.locator("#folders li").allTextContents();
  check(folders.some((f) => f.startsWith("Inbox (2)")), `folders: ${folders}`);
  const row = page.locator(`#messages tr:has-text("${SUBJECT}")`);
  check((await row.count()) === 1, "the message is not listed");
  check((await row.getAttribute("class")) === "unread", "not shown as unread");
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-01-inbox.png"), fullPage: true });
  report("listed", { folders });

  await Promise.all([page.waitForNavigation(), row.locator("a").click()]);
  const body = await page.textContent("pre.body");
  check((await page.locator("text=formatted version").count()) === 0, "a plain message called formatted");
  check(body.includes(TEXT), `text: ${body}`);
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-02-message.png"), fullPage: true });
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#attachments a")]);
  const saved = path.join(ARTIFACTS, "downloaded-attachment");
  await download.saveAs(saved);
  const same = Buffer.compare(fs.readFileSync(saved), fs.readFileSync(ATTACHMENT)) === 0;
  check(same, "the downloaded attachment differs");
  report("read", { filename: download.suggestedFilename() });

  await page.goto(`${BASE}/mail`);
  check((await page.locator(`#messages tr:has-text("${SUBJECT}")`).getAttribute("class")) === "", "still unread");

  // HTML mail: shown in the sandboxed frame, without its script, without remote content.
  const scriptErrors = [];
  page.on("pageerror", (e) => scriptErrors.push(String(e)));
  await Promise.all([
    page.waitForNavigation(),
    page.locator(`#messages tr:has-text("${process.env.HTML_SUBJECT}") a`).click(),
  ]);
  const frame = page.frameLocator("iframe.formatted");
  await frame.locator("text=Hello").waitFor();
  const bold = await frame.locator("b").textContent();
  check(bold === "bold", `the formatted text: ${bold}`);
  check((await frame.locator("#ran").count()) === 0, "the message's script ran");
  check((await frame.locator('img[src^="http"]').count()) === 0, "a remote image is in the page");
  // The message's own image (cid:) is shown, from the message itself.
  const own = await frame.locator('img[src^="data:image/png"]').evaluate((img) => [img.src.slice(0, 22), img.naturalWidth]);
  check(own[0] === "data:image/png;base64," && own[1] === 1, `the message's own image: ${own}`);
  await page.waitForTimeout(1500);
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-03-html.png"), fullPage: true });
  report("html", { errors: scriptErrors.length });
  // Search: by text, by sender, by date.
  await page.goto(`${BASE}/mail`);
  const inboxUrl = page.url();
  const listed = async () => (await page.locator("#messages td a").allTextContents()).sort();
  await page.goto(inboxUrl);
  await page.click("details summary");
  await page.fill("#s-text", "anhang");
  await Promise.all([page.waitForNavigation(), page.click("#search button")]);
  check(JSON.stringify(await listed()) === JSON.stringify([SUBJECT]), `text search: ${await listed()}`);
  await page.goto(`${inboxUrl}?from=bob`);
  check((await listed()).length === 2, `from search: ${await listed()}`);
  await page.goto(`${inboxUrl}?since=2999-01-01`);
  check((await listed()).length === 0, `date search: ${await listed()}`);
  await page.goto(`${inboxUrl}?subject=newsletter`);
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-04-search.png"), fullPage: true });
  report("searched");

  // Select and act: flag, then delete (to Trash); BACKUP keeps its copy and offers no action.
  await page.goto(inboxUrl);
  const select = (subject) => page.locator(`#messages tr:has-text("${subject}") input[type=checkbox]`).check();
  await select(process.env.HTML_SUBJECT);
  await Promise.all([page.waitForNavigation(), page.click('#bulk button[value="flag"]')]);
  check(((await page.textContent(".notice")) || "").includes("Flagged"), "no flagged notice");
  check(((await page.textContent(`#messages tr:has-text("${process.env.HTML_SUBJECT}")`)) || "").includes("⚑"), "not flagged");
  await select(process.env.HTML_SUBJECT);
  await Promise.all([page.waitForNavigation(), page.click('#bulk button[value="delete"]')]);
  check(JSON.stringify(await listed()) === JSON.stringify([SUBJECT]), `after delete: ${await listed()}`);
  const folderLinks = await page.locator("#folders a").evaluateAll((links) => links.map((a) => [a.textContent, a.href]));
  const trash = folderLinks.find(([name]) => name === "Trash")[1];
  const backup = folderLinks.find(([name]) => name.startsWith("BACKUP"))[1];
  await page.goto(trash);
  check(JSON.stringify(await listed()) === JSON.stringify([process.env.HTML_SUBJECT]), `trash: ${await listed()}`);
  await page.goto(backup);
  check((await listed()).length === 2, `backup: ${await listed()}`);
  check((await page.locator("#bulk").count()) === 0, "BACKUP offers actions");
  const forged = await page.request.post(`${inboxUrl}/act`, { form: { csrf: "forged", action: "delete", uid: "1" }, maxRedirects: 0 });
  check(forged.status() === 403, `a forged action: ${forged.status()}`);
  report("acted");

  // A phone's width: nothing wider than the screen, on the list and on a message.
  await page.setViewportSize({ width: 375, height: 800 });
  for (const url of [inboxUrl, `${inboxUrl}/1`]) {
    await page.goto(url);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    check(wide <= 376, `${url} is ${wide}px wide on a 375px screen`);
  }
  await page.goto(inboxUrl);
  await page.screenshot({ path: path.join(ARTIFACTS, "mail-05-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
  report("phone");

  // Another account's folder and message numbers lead nowhere.
  const other = await page.request.get(`${BASE}/mail/999999`);
  check(other.status() === 404, `a made-up folder: ${other.status()}`);
  report("done");
} finally {
  await browser.close();
}
