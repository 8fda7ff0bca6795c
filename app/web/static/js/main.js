// Boots the dashboard: loads the served config, restores the session, mounts the views
// and starts the streams. Views render from the state (state.js); this module only moves
// between signed out, onboarding and the terminal.

import * as api from "./api.js";
import { startAccount, stopAccount } from "./account.js";
import { mountAccountBar } from "./account_bar.js";
import { mountAgentBanner } from "./agent_banner.js";
import { mountApiKeys, refreshApiKeys } from "./api_keys.js";
import { mountChart } from "./chart.js";
import { mountLogin, mountOnboarding, showLoginMessage } from "./login.js";
import { startPrices, stopPrices, wantPrices } from "./price_socket.js";
import { currentToken, endSession, restoreSession, watchExpiry } from "./session.js";
import { state, subscribe, update } from "./state.js";
import { mountTables } from "./tables.js";
import { mountTicket } from "./ticket.js";
import { mountTabs } from "./toolbox.js";
import { loadWatchlist, mountWatchlist } from "./watchlist.js";

const EXPIRED = "Your session has expired: sign in again to go on trading.";
const RETRY_MS = 3000;

function mountViews() {
  mountLogin({ onSignedIn: enter });
  mountOnboarding({ onDone: () => enter(state.session), onSignOut: () => signOut("Signed out.") });
  mountWatchlist();
  mountChart();
  mountTicket();
  mountTables();
  mountTabs();
  mountAccountBar();
  mountAgentBanner();
  mountApiKeys();
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
  subscribe(["view"], ({ view }) => {
    document.getElementById("login-view").hidden = view !== "login";
    document.getElementById("onboarding-view").hidden = view !== "onboarding";
    document.getElementById("terminal").hidden = view !== "terminal";
    document.getElementById("boot-message").hidden = view !== "loading";
    if (view === "login") document.getElementById("login-email").focus();
  });
  subscribe(["session"], ({ session }) => {
    document.getElementById("user-email").textContent = session?.email ?? "";
    if (session?.email) document.getElementById("login-email").value = session.email;
  });
  subscribe(["watchlist", "selected", "positions", "pendingOrders"], () => {
    const names = new Set(state.watchlist);
    if (state.selected) names.add(state.selected);
    for (const item of [...state.positions, ...state.pendingOrders]) names.add(item.symbol);
    wantPrices(names);
    const options = document.getElementById("symbol-options");
    const known = new Set([...options.options].map((option) => option.value));
    for (const name of names) if (!known.has(name)) options.append(new Option(name, name));
  });
}

async function loadConfig() {
  try {
    const response = await fetch("/dashboard/config.json");
    if (response.ok) return await response.json();
  } catch {
    // the defaults below: only what the first release had
  }
  return { demo_login: null, features: {} };
}

async function enter(session) {
  update({ session });
  watchExpiry(session, () => signOut(EXPIRED));
  // Prices need only the token: they start before anything else is asked.
  startPrices(currentToken, () => signOut(EXPIRED));
  let user;
  try {
    user = (await api.me()).body;
  } catch (error) {
    if (error.status === 401) return; // signed out already, with the reason
    // The server is away (restarting, say): the session still holds; ask again shortly.
    document.getElementById("boot-message").textContent = `${error.message} Trying again…`;
    update({ view: "loading" });
    setTimeout(() => state.session === session && enter(session), RETRY_MS);
    return;
  }
  update({ user });
  if (!user.onboarding_completed) {
    stopAccount();
    update({ view: "onboarding" });
    return;
  }
  update({ view: "terminal" });
  startAccount(currentToken, {
    onExpired: () => signOut(EXPIRED),
    onNotOnboarded: () => {
      stopAccount();
      update({ view: "onboarding" });
    },
  });
  refreshApiKeys();
  if (state.config.features.symbols) loadSymbols();
}

async function loadSymbols() {
  try {
    const { body } = await api.listSymbols();
    const options = document.getElementById("symbol-options");
    const known = new Set([...options.options].map((option) => option.value));
    for (const symbol of body) if (!known.has(symbol.name)) options.append(new Option(symbol.name, symbol.name));
  } catch {
    // suggestions only: typing any symbol still works
  }
}

function signOut(reason) {
  stopPrices();
  stopAccount();
  endSession();
  update({ session: null, user: null, view: "login", positions: [], pendingOrders: [], orders: [], deals: [], account: null });
  showLoginMessage(reason);
}

async function boot() {
  mountViews();
  api.configureApi({ token: currentToken, onExpired: () => signOut(EXPIRED) });
  const watchlist = loadWatchlist();
  update({ watchlist, selected: watchlist[0] ?? null });
  const saved = restoreSession();
  const config = loadConfig().then((loaded) => update({ config: loaded }));
  if (saved) {
    update({ session: saved });
    startPrices(currentToken, () => signOut(EXPIRED)); // the first price, as early as can be
    await config;
    enter(saved);
  } else {
    await config;
    update({ view: "login" });
  }
}

boot();
