// The access token: kept in sessionStorage (this tab only, gone when it closes), never an
// API key. There is no refresh route, so when the token expires (or the server stops
// accepting it) the person is asked to sign in again, with a message saying why.

import * as api from "./api.js";
import { state } from "./state.js";

const KEY = "mt5gate.session";
let expiryTimer = 0;

export function restoreSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY) ?? "null");
    if (saved?.token && saved.expiresAt > Date.now()) return saved;
  } catch {
    // A malformed entry is as good as none.
  }
  sessionStorage.removeItem(KEY);
  return null;
}

function startSession(answer, email) {
  const session = {
    token: answer.access_token,
    email,
    expiresAt: Date.now() + answer.expires_in * 1000,
  };
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

// Arms the timer that ends the session when its token expires.
export function watchExpiry(session, onExpired) {
  clearTimeout(expiryTimer);
  // setTimeout holds at most ~24.8 days; tokens live hours.
  const delay = Math.min(session.expiresAt - Date.now(), 2 ** 31 - 1);
  expiryTimer = setTimeout(onExpired, Math.max(delay, 0));
}

export function endSession() {
  clearTimeout(expiryTimer);
  sessionStorage.removeItem(KEY);
}

export async function signIn(email, password, { create = false } = {}) {
  const { body } = create ? await api.register(email, password) : await api.login(email, password);
  return startSession(body, email);
}

export const currentToken = () => state.session?.token ?? null;
