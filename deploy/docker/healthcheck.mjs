// Health check of a taskmesh container: exits 0 when GET /healthz on 127.0.0.1:<port> answers 200.
// An internal port speaks TLS when the service has a mesh CA (TASKMESH_MESH_CA): then over TLS,
// trusting that CA (/healthz needs no client certificate). Plain JavaScript: no tsx at start-up.
//   node /app/deploy/docker/healthcheck.mjs 8081
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";

const port = Number(process.argv[2]);
const ca = process.env.TASKMESH_MESH_CA;
const tls = process.argv[3] !== "plain" && ca !== undefined && ca !== "";
const options = { host: "127.0.0.1", port, path: "/healthz", timeout: 2500 };
const req = tls
  ? https.get({ ...options, ca: readFileSync(ca), checkServerIdentity: () => undefined }, done)
  : http.get(options, done);
req.on("error", () => process.exit(1));
req.on("timeout", () => process.exit(1));
function done(res) {
  res.resume();
  process.exit(res.statusCode === 200 ? 0 : 1);
}
