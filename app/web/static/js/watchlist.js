// The watchlist: live bid, ask and spread of each instrument, each change marked up or
// down by an arrow as well as a colour, stale quotes marked; add, remove, select.

import { state, subscribe, update } from "./state.js";
import { price } from "./format.js";

const STORAGE_KEY = "mt5gate.watchlist";
const DEFAULT_WATCHLIST = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"];
const SYMBOL = /^[A-Za-z0-9._#-]{1,32}$/;
const STALE_AFTER_MS = 5000;
const rows = new Map(); // instrument -> {row, bid, ask, spread, rev}

export function loadWatchlist() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
    if (Array.isArray(saved) && saved.every((name) => SYMBOL.test(name))) return saved;
  } catch {
    // fall through to the default list
  }
  return [...DEFAULT_WATCHLIST];
}

function save(list) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(list));
  update({ watchlist: list });
}

export function mountWatchlist() {
  const body = document.querySelector("#watchlist tbody");
  const form = document.getElementById("watchlist-add");
  const input = document.getElementById("watchlist-symbol");
  const message = document.getElementById("watchlist-message");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = input.value.trim().toUpperCase();
    if (!SYMBOL.test(name)) {
      message.textContent = "A symbol is 1–32 letters, digits or . _ # -.";
      return;
    }
    message.textContent = state.watchlist.includes(name) ? `${name} is already in the watchlist.` : "";
    if (!state.watchlist.includes(name)) save([...state.watchlist, name]);
    input.value = "";
    update({ selected: name });
  });

  body.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    const name = button.closest("tr").dataset.instrument;
    if (button.dataset.action === "remove") {
      const list = state.watchlist.filter((other) => other !== name);
      save(list);
      if (state.selected === name) update({ selected: list[0] ?? null });
    } else {
      update({ selected: name });
    }
  });

  subscribe(["watchlist", "selected"], () => renderRows(body));
  subscribe(["quotes"], renderQuotes);
  subscribe(["priceStreamError"], ({ priceStreamError }) => {
    if (priceStreamError) message.textContent = `The price stream refused: ${priceStreamError}`;
  });
  setInterval(markStale, 1000);
}

function renderRows(body) {
  for (const [name, entry] of rows) {
    if (!state.watchlist.includes(name)) {
      entry.row.remove();
      rows.delete(name);
    }
  }
  for (const name of state.watchlist) {
    let entry = rows.get(name);
    if (!entry) {
      entry = createRow(name);
      rows.set(name, entry);
    }
    body.append(entry.row); // in list order
    const selected = name === state.selected;
    entry.row.classList.toggle("selected", selected);
    entry.select.setAttribute("aria-pressed", String(selected));
  }
  renderQuotes();
}

function createRow(name) {
  const row = document.createElement("tr");
  row.dataset.instrument = name;
  const cell = (className) => {
    const td = document.createElement("td");
    td.className = className;
    row.append(td);
    return td;
  };
  const symbol = cell("symbol");
  const select = document.createElement("button");
  select.type = "button";
  select.className = "symbol-button";
  select.textContent = name;
  const staleTag = document.createElement("span");
  staleTag.className = "stale-tag";
  staleTag.textContent = "stale";
  staleTag.hidden = true;
  symbol.append(select, staleTag);
  const bid = cell("num bid");
  const ask = cell("num ask");
  const spread = cell("num spread");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "icon";
  remove.dataset.action = "remove";
  remove.setAttribute("aria-label", `Remove ${name}`);
  remove.textContent = "\u00D7";
  cell("actions").append(remove);
  bid.textContent = ask.textContent = spread.textContent = "–";
  return { row, select, staleTag, bid, ask, spread, rev: 0 };
}

function renderQuotes() {
  for (const [name, entry] of rows) {
    const quote = state.quotes.get(name);
    if (!quote || quote.rev === entry.rev) continue;
    entry.rev = quote.rev;
    const arrow = quote.direction === "up" ? "\u25B2 " : quote.direction === "down" ? "\u25BC " : "";
    entry.bid.textContent = arrow + price(quote.bid, quote.digits);
    entry.ask.textContent = price(quote.ask, quote.digits);
    entry.spread.textContent = String(Math.round((quote.ask - quote.bid) * 10 ** quote.digits));
    entry.row.classList.toggle("up", quote.direction === "up");
    entry.row.classList.toggle("down", quote.direction === "down");
    setStale(entry, false);
  }
}

// Quotes older than a few seconds (tick time against this computer's clock) are marked.
function markStale() {
  const now = Date.now();
  for (const [name, entry] of rows) {
    const quote = state.quotes.get(name);
    setStale(entry, Boolean(quote) && now - quote.ts > STALE_AFTER_MS);
  }
}

function setStale(entry, stale) {
  if (entry.staleTag.hidden === !stale) return;
  entry.staleTag.hidden = !stale;
  entry.row.classList.toggle("stale", stale);
}
