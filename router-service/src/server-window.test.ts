import { connect } from "node:http2";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { raiseServerWindow, SERVER_OPTIONS } from "./server.js";

// What a client sees of a grpc-js server's windows: the stream window from the SETTINGS frame, the connection
// window from the WINDOW_UPDATE the server sends once the session starts.
async function windowsSeenByClient(server: Server): Promise<{ stream: number; connection: number }> {
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const client = connect(`http://127.0.0.1:${port}`);
  try {
    await new Promise<void>((res, rej) => {
      client.once("remoteSettings", () => res());
      client.once("error", rej);
    });
    // the WINDOW_UPDATE for the connection follows the settings; give it a few ticks to arrive
    const until = Date.now() + 500;
    while (Date.now() < until && (client.state.remoteWindowSize ?? 0) <= 65535)
      await new Promise((r) => setTimeout(r, 10));
    return {
      stream: client.remoteSettings.initialWindowSize ?? 0,
      connection: client.state.remoteWindowSize ?? 0,
    };
  } finally {
    client.close();
  }
}

describe("raiseServerWindow", () => {
  const servers: Server[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.forceShutdown();
  });

  it("raises the stream and the connection windows a client may fill", async () => {
    const s = new Server(SERVER_OPTIONS);
    servers.push(s);
    raiseServerWindow(s, 8 << 20);
    const w = await windowsSeenByClient(s);
    expect(w.stream).toBe(8 << 20);
    expect(w.connection).toBeGreaterThanOrEqual(8 << 20);
  });

  it("is needed: a plain grpc-js server gives 64 KiB windows", async () => {
    const s = new Server(SERVER_OPTIONS);
    servers.push(s);
    const w = await windowsSeenByClient(s);
    expect(w.stream).toBe(65535);
    expect(w.connection).toBe(65535);
  });
});
