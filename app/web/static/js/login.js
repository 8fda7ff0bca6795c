// Signing in (or registering), the one-click demo sign-in under `mt5gate demo`, and the
// onboarding of a new account (a broker connection, its agent, the risk disclosure).

import * as api from "./api.js";
import { signIn } from "./session.js";
import { state, subscribe } from "./state.js";

export function mountLogin({ onSignedIn }) {
  const form = document.getElementById("login-form");
  const message = document.getElementById("login-message");
  const submit = document.getElementById("login-submit");
  const toggle = document.getElementById("login-toggle");
  let creating = false;

  toggle.addEventListener("click", () => {
    creating = !creating;
    submit.textContent = creating ? "Create account" : "Sign in";
    toggle.textContent = creating ? "I have an account" : "Create an account";
    form.elements.password.autocomplete = creating ? "new-password" : "current-password";
    message.textContent = "";
  });

  const attempt = async (email, password) => {
    if (!email || !password) {
      message.textContent = "Enter your email and password.";
      return;
    }
    submit.disabled = true;
    message.textContent = "";
    try {
      onSignedIn(await signIn(email, password, { create: creating }));
      form.elements.password.value = "";
    } catch (error) {
      message.textContent = error.message;
    } finally {
      submit.disabled = false;
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(form.elements.email.value.trim(), form.elements.password.value);
  });
  document.getElementById("demo-button").addEventListener("click", () => {
    const demo = state.config.demo_login;
    creating = false;
    if (demo) attempt(demo.email, demo.password);
  });
  subscribe(["config"], ({ config }) => {
    document.getElementById("demo-sign-in").hidden = !config.demo_login;
  });
}

export function showLoginMessage(text) {
  document.getElementById("login-message").textContent = text ?? "";
}

export function mountOnboarding({ onDone, onSignOut }) {
  const form = document.getElementById("onboarding-form");
  const message = document.getElementById("onboarding-message");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const login = Number(form.elements.login.value);
    if (!form.elements.server.value.trim() || !Number.isInteger(login) || !form.elements.password.value) {
      message.textContent = "Enter the broker server, the account number and its password.";
      return;
    }
    if (!form.elements.risk.checked) {
      message.textContent = "Accept the risk disclosure to go on.";
      return;
    }
    message.textContent = "";
    try {
      const connections = (await api.listConnections()).body;
      const connection =
        connections[0] ??
        (await api.createConnection({ server: form.elements.server.value.trim(), login, password: form.elements.password.value })).body;
      const agent = (await api.provisionAgent(connection.id)).body;
      await api.completeOnboarding();
      document.getElementById("onboarding-command").textContent =
        `mt5gate agent --api ${location.origin} --agent-id ${agent.agent_id} --token=${agent.agent_token}`;
      document.getElementById("onboarding-agent").hidden = false;
    } catch (error) {
      message.textContent = error.message;
    }
  });
  document.getElementById("onboarding-done").addEventListener("click", onDone);
  document.getElementById("onboarding-sign-out").addEventListener("click", onSignOut);
}
