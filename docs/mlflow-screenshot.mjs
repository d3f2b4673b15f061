// Screenshot of the MLflow UI's runs table for docs/mlflow-shapes.png (issue #36), no browser install needed:
//   npm install @sparticuz/chromium puppeteer-core      (Chromium ships inside the npm package)
//   ablate track shapes --tracking-uri sqlite:////tmp/mlf/mlflow.db
//   mlflow ui --backend-store-uri sqlite:////tmp/mlf/mlflow.db --host 127.0.0.1 --port 5055
//   node docs/mlflow-screenshot.mjs http://127.0.0.1:5055/#/experiments/1/runs docs/mlflow-shapes.png
// It shows the metric columns named below (MLflow hides metrics behind "Columns") and prints the headers it saw.
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";

const [url, out] = process.argv.slice(2);
const columns = ["CIDEr", "BLEU-4", "METEOR", "swap_rate", "nll_gap", "empty_rate", "code_fingerprint"];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clickButton = (page, test) => page.evaluate((test) => {
  const hits = [...document.querySelectorAll("button")].filter((b) => new Function("b", `return ${test}`)(b));
  hits.forEach((b) => b.click());
  return hits.length;
}, test);

const browser = await puppeteer.launch({ args: chromium.args, executablePath: await chromium.executablePath(),
  headless: true, defaultViewport: { width: 1900, height: 1150 } });
const page = await browser.newPage();
await page.goto(url, { waitUntil: "networkidle0", timeout: 120000 });
await sleep(5000);
await clickButton(page, `(b.getAttribute("aria-label") || "").toLowerCase().includes("close")`); // the assistant panel
await clickButton(page, `b.innerText.trim() === "Columns"`);
await sleep(2000);
for (const name of columns) {
  const found = await page.evaluate((name) => {
    const item = [...document.querySelectorAll("span.du-bois-light-tree-title")].find((e) => e.innerText.trim() === name);
    if (item) item.click();
    return Boolean(item);
  }, name);
  if (!found) console.error(`column ${name} not offered by the UI`);
  await sleep(400);
}
await page.keyboard.press("Escape");
await sleep(2000);
await page.screenshot({ path: out });
const headers = await page.evaluate(() =>
  [...new Set([...document.querySelectorAll('[role="columnheader"]')].map((h) => h.innerText.trim()).filter(Boolean))]);
console.log(`columns seen: ${headers.join(" | ")}`);
console.log(`rows: ${await page.evaluate(() => document.body.innerText.match(/\d+ matching runs/)?.[0])}`);
await browser.close();
