// socket.io-client (the browser's library, run by Node) connecting with chosen Origin headers,
// driven by tests/web/test_origins.py. Prints one JSON line: per case, "connected" or the
// connect_error's data.code (or its message when it carries no data).
// usage: node tests/js/origins.mjs URL JWT '[{"transport": "websocket"|"polling", "origin": "..."|null}, ...]'
import { io } from "socket.io-client";

const [url, token, cases] = process.argv.slice(2);

function attempt({ transport, origin }) {
  return new Promise((resolve) => {
    // Node sends no Origin of its own; a browser always does: extraHeaders plays the browser.
    const extraHeaders = origin === null ? {} : { Origin: origin };
    const socket = io(url, { auth: { token }, transports: [transport], reconnection: false, forceNew: true,
                             extraHeaders, timeout: 5000 });
    socket.on("connected", () => {
      socket.close();
      resolve("connected");
    });
    socket.on("connect_error", (err) => {
      socket.close();
      resolve(err.data?.code ?? `no code: ${err.message}`);
    });
  });
}

const outcomes = [];
for (const one of JSON.parse(cases)) outcomes.push(await attempt(one));
process.stdout.write(JSON.stringify(outcomes) + "\n");
process.exit(0);
