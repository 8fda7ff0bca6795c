// The account bar (a region named "Account"): balance, equity, margin used and free,
// currency and leverage.

import { money } from "./format.js";
import { subscribe } from "./state.js";

export function mountAccountBar() {
  const fields = new Map(
    [...document.querySelectorAll("#account-bar [data-field]")].map((dd) => [dd.dataset.field, dd]),
  );
  subscribe(["account"], ({ account }) => {
    for (const [name, dd] of fields) {
      const value = account?.[name];
      let text = "–";
      if (name === "currency" && value) text = value;
      else if (name === "leverage" && value) text = `1:${value}`;
      else if (typeof value === "number") text = money(value);
      if (dd.textContent !== text) dd.textContent = text;
    }
  });
}
