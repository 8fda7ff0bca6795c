// How numbers, times and sides read on screen. Up and down are never colour alone: an
// arrow or a sign goes with the colour.

export function price(value, digits = 5) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

export function money(value) {
  if (typeof value !== "number") return "–";
  return value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

// "+12.30" / "−4.10" (a true minus sign), for profits.
export function signedMoney(value) {
  if (typeof value !== "number") return "–";
  const text = money(Math.abs(value));
  return value > 0 ? `+${text}` : value < 0 ? `\u2212${text}` : text;
}

export function signClass(value) {
  return value > 0 ? "up" : value < 0 ? "down" : "";
}

export function volume(value) {
  return typeof value === "number" ? String(Number(value.toFixed(2))) : "–";
}

export function time(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "–";
  return date.toISOString().replace("T", " ").slice(0, 19);
}

export function sideLabel(side, type = "market") {
  const kind = { market: "", limit: " limit", stop: " stop", stop_limit: " stop limit" }[type] ?? ` ${type}`;
  const arrow = side === "buy" ? "\u25B2" : side === "sell" ? "\u25BC" : "";
  return `${arrow} ${side ?? ""}${kind}`.trim();
}
