// A WebSocket that reconnects by itself: exponential back-off with jitter (0.5 s to 5 s),
// at once when the browser comes back online. Close codes that mean "do not come back"
// (bad credentials, not onboarded, ...) are handed to onRefused and end it.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 5000;

export class ReconnectingSocket {
  constructor({ url, onOpen, onMessage, onStatus, onRefused, refusedCodes }) {
    Object.assign(this, { url, onOpen, onMessage, onStatus, onRefused, refusedCodes });
    this.socket = null;
    this.delay = FIRST_DELAY_MS;
    this.timer = 0;
    this.stopped = true;
    this.wakeUp = () => this.reconnectNow();
  }

  start() {
    this.stopped = false;
    addEventListener("online", this.wakeUp);
    this.connect();
  }

  stop() {
    this.stopped = true;
    removeEventListener("online", this.wakeUp);
    clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
    this.onStatus("idle");
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  connect() {
    clearTimeout(this.timer);
    const socket = new WebSocket(this.url());
    this.socket = socket;
    this.onStatus(this.delay === FIRST_DELAY_MS ? "connecting" : "reconnecting");
    socket.onopen = () => {
      this.delay = FIRST_DELAY_MS;
      this.onStatus("live");
      this.onOpen?.();
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to act on
      }
      this.onMessage(message);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket || this.stopped) return;
      this.socket = null;
      if (this.refusedCodes.includes(event.code)) {
        this.stopped = true;
        this.onStatus("refused");
        this.onRefused(event.code);
        return;
      }
      this.onStatus("reconnecting");
      const delay = this.delay * (0.75 + Math.random() / 2);
      this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  reconnectNow() {
    if (this.stopped || this.socket) return;
    this.delay = FIRST_DELAY_MS;
    this.connect();
  }
}

export function socketUrl(path, query) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [name, value] of Object.entries(query)) if (value != null) url.searchParams.set(name, value);
  return url.href;
}
