/**
 * Entry point of the `taskmesh` command-line client: the only file that touches `process`
 * (argv, env, stdio, signals, exit). Run it with `node --import tsx cli/main.ts …` or `bin/taskmesh`.
 */
import { homedir } from "node:os";
import { run } from "./run.js";

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(typeof c === "string" ? Buffer.from(c) : (c as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}

const abort = new AbortController();
// The first Ctrl-C ends streams cleanly (exit 130); a second one kills at once.
process.once("SIGINT", () => {
  abort.abort();
  process.once("SIGINT", () => process.exit(130));
});
// A closed pipe (`taskmesh ls | head -1`) ends the output quietly.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});

const code = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  home: homedir(),
  readStdin,
  signal: abort.signal,
});
// Exit once stdout has flushed: an idle HTTP/2 session to the gateway would keep the process alive.
process.stdout.write("", () => process.exit(code));
