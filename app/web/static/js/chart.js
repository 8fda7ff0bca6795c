// The chart: candles of the selected instrument (TradingView's lightweight-charts), the
// last bar moved by live ticks, positions' entry, stop loss and take profit and pending
// orders' prices drawn as price lines. Drawn on the bid, as MT5 draws its charts.

import {
  CandlestickSeries,
  ColorType,
  CrosshairMode,
  LineStyle,
  MismatchDirection,
  createChart,
} from "../vendor/lightweight-charts-5.2.1.standalone.production.mjs";
import * as api from "./api.js";
import { price } from "./format.js";
import { digitsOf, state, subscribe, update } from "./state.js";

const TIMEFRAMES = ["M1", "M5", "M15", "M30", "H1", "H4", "D1", "W1", "MN1"];
const SECONDS = { M1: 60, M5: 300, M15: 900, M30: 1800, H1: 3600, H4: 14400, D1: 86400, W1: 604800 };
const FIRST_SUNDAY = 3 * 86400; // 1970-01-04: weekly bars open on Sunday, as in MT5
const BAR_COUNT = 300;
const RETRY_MS = 5000;
const COLORS = { up: "#26a69a", down: "#ef5350", entry: "#2962ff", pending: "#f5a623", text: "#b2b5be" };

let chart = null;
let series = null;
let bars = [];
let loaded = null; // "EURUSD/M1" once its candles are on the chart
let loading = 0;
let digits = 5;
let lastRev = 0;
const lines = new Map(); // "position:123:sl" -> {line, price, label}
let elements = {};
let retry = 0;

export function mountChart() {
  elements = {
    container: document.getElementById("chart"),
    title: document.getElementById("chart-title"),
    legend: document.getElementById("chart-legend"),
    lines: document.getElementById("chart-lines"),
    message: document.getElementById("chart-message"),
    timeframes: document.getElementById("timeframes"),
  };
  for (const timeframe of TIMEFRAMES) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = timeframe;
    button.dataset.timeframe = timeframe;
    button.addEventListener("click", () => update({ timeframe }));
    elements.timeframes.append(button);
  }
  chart = createChart(elements.container, {
    autoSize: true,
    // The library's own logo brings a <style> element, which the page's CSP refuses: the
    // toolbar carries the attribution as a link instead.
    layout: {
      background: { type: ColorType.Solid, color: "#131722" },
      textColor: COLORS.text,
      fontSize: 11,
      attributionLogo: false,
    },
    grid: { vertLines: { color: "#1f2430" }, horzLines: { color: "#1f2430" } },
    crosshair: { mode: CrosshairMode.Normal },
    rightPriceScale: { borderColor: "#2a2e39" },
    timeScale: { borderColor: "#2a2e39", timeVisible: true, secondsVisible: false, rightOffset: 4 },
  });
  series = chart.addSeries(CandlestickSeries, {
    upColor: COLORS.up,
    downColor: COLORS.down,
    borderVisible: false,
    wickUpColor: COLORS.up,
    wickDownColor: COLORS.down,
    // The price scale takes in the price lines too: a position's stops stay in sight.
    autoscaleInfoProvider: (original) => {
      const range = original();
      if (!range || !lines.size) return range;
      const prices = [...lines.values()].map((line) => line.value);
      const { minValue, maxValue } = range.priceRange;
      return { ...range, priceRange: { minValue: Math.min(minValue, ...prices), maxValue: Math.max(maxValue, ...prices) } };
    },
  });
  chart.subscribeCrosshairMove((param) => showLegend(param.seriesData?.get(series) ?? bars.at(-1)));
  subscribe(["selected", "timeframe", "view"], load);
  // Candles that could not be had (the server restarting, the feed away) are asked for
  // again, and at once when the price stream is back.
  subscribe(["streams"], ({ streams }) => {
    if (streams.prices === "live" && !loaded) load();
  });
  subscribe(["quotes"], applyTick);
  subscribe(["positions", "pendingOrders", "selected"], drawPriceLines);
}

async function load() {
  for (const button of elements.timeframes.children) {
    button.setAttribute("aria-pressed", String(button.dataset.timeframe === state.timeframe));
  }
  const { selected: instrument, timeframe } = state;
  const key = `${instrument}/${timeframe}`;
  if (state.view !== "terminal") loaded = null; // signed out: load afresh on the way back
  if (!instrument || key === loaded || state.view !== "terminal") return;
  elements.title.textContent = `${instrument} · ${timeframe}`;
  const request = ++loading;
  loaded = null;
  clearTimeout(retry);
  elements.message.textContent = "Loading candles…";
  let answer;
  try {
    answer = await api.getCandles(instrument, timeframe, BAR_COUNT);
  } catch (error) {
    if (request !== loading) return;
    bars = [];
    series.setData([]);
    elements.message.textContent = `No candles for ${instrument}: ${error.message}`;
    describe();
    if ([0, 502, 503, 504].includes(error.status)) retry = setTimeout(load, RETRY_MS);
    return;
  }
  if (request !== loading) return;
  digits = digitsOf(instrument);
  bars = answer.body.map(({ time, open, high, low, close }) => ({ time, open, high, low, close }));
  series.applyOptions({ priceFormat: { type: "price", precision: digits, minMove: 10 ** -digits } });
  series.setData(bars);
  chart.timeScale().scrollToRealTime();
  loaded = key;
  lastRev = 0;
  elements.message.textContent = "";
  applyTick();
  drawPriceLines();
}

// The bar a tick at `ms` falls in, in epoch seconds.
function barTime(ms, timeframe) {
  const seconds = Math.floor(ms / 1000);
  if (timeframe === "MN1") {
    const date = new Date(seconds * 1000);
    return Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 1) / 1000;
  }
  if (timeframe === "W1") return Math.floor((seconds - FIRST_SUNDAY) / 604800) * 604800 + FIRST_SUNDAY;
  return Math.floor(seconds / SECONDS[timeframe]) * SECONDS[timeframe];
}

function applyTick() {
  const quote = state.quotes.get(state.selected);
  if (!loaded || !quote || quote.rev === lastRev || !bars.length) return;
  lastRev = quote.rev;
  if (quote.digits > digits) {
    digits = quote.digits;
    series.applyOptions({ priceFormat: { type: "price", precision: digits, minMove: 10 ** -digits } });
  }
  const time = barTime(quote.ts, state.timeframe);
  const last = bars.at(-1);
  if (time < last.time) return; // a late tick: its bar is history
  const bar =
    time === last.time
      ? { ...last, high: Math.max(last.high, quote.bid), low: Math.min(last.low, quote.bid), close: quote.bid }
      : { time, open: quote.bid, high: quote.bid, low: quote.bid, close: quote.bid };
  if (time === last.time) bars[bars.length - 1] = bar;
  else bars.push(bar);
  series.update(bar);
  showLegend(bar);
  describe();
}

function showLegend(bar) {
  if (!bar) {
    elements.legend.textContent = "";
    return;
  }
  const p = (value) => price(value, digits);
  elements.legend.textContent = `O ${p(bar.open)}  H ${p(bar.high)}  L ${p(bar.low)}  C ${p(bar.close)}`;
}

function describe() {
  // The last bar as the chart holds it (not our copy): what is described is what is drawn.
  const last = bars.length ? series.dataByIndex(Number.MAX_SAFE_INTEGER, MismatchDirection.NearestLeft) : null;
  const summary = last ? `${bars.length} bars, last close ${price(last.close, digits)}` : "no bars";
  elements.container.setAttribute("aria-label", `${state.selected} ${state.timeframe} chart: ${summary}`);
}

function drawPriceLines() {
  if (!series) return;
  const wanted = new Map();
  const add = (key, value, color, title, style = LineStyle.Dashed) => {
    if (typeof value === "number" && value > 0) wanted.set(key, { value, color, title, style });
  };
  for (const p of state.positions.filter((p) => p.symbol === state.selected)) {
    const side = p.side === "buy" ? "Buy" : "Sell";
    add(`position:${p.position_id}:entry`, p.open_price, COLORS.entry, `${side} ${p.volume}`, LineStyle.Solid);
    add(`position:${p.position_id}:sl`, p.sl, COLORS.down, "SL");
    add(`position:${p.position_id}:tp`, p.tp, COLORS.up, "TP");
  }
  for (const o of state.pendingOrders.filter((o) => o.symbol === state.selected)) {
    add(`pending:${o.ticket}:price`, o.price, COLORS.pending, `${o.side} ${o.type.replace("_", " ")} ${o.volume}`);
    add(`pending:${o.ticket}:sl`, o.sl, COLORS.down, "SL");
    add(`pending:${o.ticket}:tp`, o.tp, COLORS.up, "TP");
  }
  for (const [key, drawn] of lines) {
    if (!wanted.has(key)) {
      series.removePriceLine(drawn.line);
      lines.delete(key);
    }
  }
  for (const [key, want] of wanted) {
    const options = { price: want.value, color: want.color, title: want.title, lineStyle: want.style };
    const drawn = lines.get(key);
    if (!drawn) {
      const line = series.createPriceLine({ ...options, id: key, lineWidth: 1, axisLabelVisible: true });
      lines.set(key, { ...want, line });
    } else if (drawn.value !== want.value || drawn.title !== want.title) {
      drawn.line.applyOptions(options);
      Object.assign(drawn, want);
    }
  }
  // Read back from the chart, so that what is described is what the chart draws.
  const text = series.priceLines().map((line) => {
    const { id, price: value } = line.options();
    return `${describeLine(id)} ${price(value, digits)}`;
  });
  elements.lines.textContent = text.length ? `Price lines: ${text.join("; ")}.` : "No price lines.";
}

function describeLine(key) {
  const [owner, id, kind] = key.split(":");
  const what = { entry: "entry", sl: "stop loss", tp: "take profit", price: "order price" }[kind];
  return `${owner === "position" ? "position" : "pending order"} ${id} ${what}`;
}
