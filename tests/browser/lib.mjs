// What every browser script shares: reporting steps as JSON lines on standard output (the
// Rust test reads them), failing with a message, and launching Debian's chromium headless.

import { chromium } from "playwright-core";

export function report(step, fields = {}) {
  console.log(JSON.stringify({ step, ...fields }));
}

export function fail(message) {
  console.error(message);
  process.exit(1);
}

export function check(condition, message) {
  if (!condition) fail(message);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function launch() {
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu"] });
}
