// HTTP side of a worker: GET /metrics (Prometheus text), /healthz (process up), /readyz (gRPC bound and serving).

import type { Server } from "node:http";
import express from "express";
import type { Registry } from "prom-client";

export async function startHttpServer(o: {
  host?: string;
  port: number;
  registry: Registry;
  ready: () => boolean;
}): Promise<{ server: Server; port: number }> {
  const app = express();
  app.get("/metrics", async (_req, res) => {
    res.set("Content-Type", o.registry.contentType);
    res.end(await o.registry.metrics());
  });
  app.get("/healthz", (_req, res) => {
    res.type("text/plain").send("ok\n");
  });
  app.get("/readyz", (_req, res) => {
    if (o.ready()) res.type("text/plain").send("ready\n");
    else res.status(503).type("text/plain").send("not ready\n");
  });
  return new Promise((resolve, reject) => {
    const server = app.listen(o.port, o.host ?? "0.0.0.0");
    server.once("listening", () => {
      const addr = server.address();
      resolve({ server, port: typeof addr === "object" && addr ? addr.port : o.port });
    });
    server.once("error", reject);
  });
}
