import { constants } from "node:fs";
import { lstat, mkdir, open, readlink, realpath, stat, type FileHandle } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import {
  invalidPayload,
  optionalString,
  requireString,
  TaskFailure,
  type JsonObject,
  type TaskContext,
  type TaskHandler,
} from "../task-api.js";

/** Largest file `read` returns: results travel in one protobuf message. */
export const MAX_FILE_BYTES = 1024 * 1024;

const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
// No O_TRUNC: the file is truncated only after the opened descriptor has been checked.
const WRITE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK;

function invalidArgument(message: string): TaskFailure {
  return new TaskFailure("INVALID_ARGUMENT", message, false);
}

function outside(rel: string): TaskFailure {
  return invalidArgument(`path ${JSON.stringify(rel)} resolves outside the files root`);
}

/**
 * A file with more than one link may be the same file as one outside the root (a hard link, made
 * by anyone who can write both places): its path says nothing about where its data lives.
 */
function refuseHardLink(nlink: number, rel: string): void {
  if (nlink > 1) throw invalidArgument(`path ${JSON.stringify(rel)} has ${nlink} hard links: refused (it may be a file outside the files root)`);
}

/**
 * The files root of one tenant: `<filesRoot>/<tenant>` (tenants never see each other's files);
 * the root itself for a task of no known tenant.
 */
export function tenantRoot(filesRoot: string, tenant: string): string {
  if (tenant === "") return filesRoot;
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(tenant) || tenant === "." || tenant === "..") {
    throw invalidArgument(`tenant ${JSON.stringify(tenant)} cannot name a files root`);
  }
  return join(filesRoot, tenant);
}

/** True when `p` is `root` or below it (both absolute and normalised). */
function within(root: string, p: string): boolean {
  if (root === sep) return true;
  return p === root || p.startsWith(root + sep);
}

function errno(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err && typeof err.code === "string" ? err.code : undefined;
}

/** Maps a file-system error to a TaskFailure naming only the relative path (never the root). */
function fsFailure(err: unknown, rel: string): TaskFailure {
  if (TaskFailure.is(err)) return err;
  const code = errno(err);
  const p = JSON.stringify(rel);
  switch (code) {
    case "ENOENT":
      return new TaskFailure("NOT_FOUND", `${p} does not exist`, false);
    case "EACCES":
    case "EPERM":
      return new TaskFailure("PERMISSION_DENIED", `${p}: permission denied`, false);
    case "EISDIR":
    case "ENOTDIR":
    case "ELOOP":
    case "ENXIO":
    case "ENAMETOOLONG":
      return invalidArgument(`${p} is not a usable file path (${code})`);
    default:
      return new TaskFailure("IO_ERROR", `${p}: i/o error${code === undefined ? "" : ` (${code})`}`, true);
  }
}

/**
 * Linux: checks what an opened descriptor really is, through /proc, closing the gap between the
 * checks on paths and the open (a component swapped for a symlink meanwhile). Where /proc is
 * missing the path checks alone apply.
 */
async function assertOpenedWithin(fh: FileHandle, root: string, rel: string): Promise<void> {
  let actual: string;
  try {
    actual = await readlink(`/proc/self/fd/${fh.fd}`);
  } catch {
    return;
  }
  if (!within(root, actual)) throw outside(rel);
}

/** Validates `rel` lexically and returns the absolute path it names under the real root. */
function lexicalTarget(root: string, rel: string): string {
  if (rel === "" || rel.includes("\0")) throw invalidPayload("path: must be a non-empty relative path");
  if (isAbsolute(rel)) throw invalidArgument(`path ${JSON.stringify(rel)} must be relative to the files root`);
  const target = resolve(root, rel);
  if (!within(root, target)) throw outside(rel);
  return target;
}

/** Follows a symlink at `p` (refusing dangling ones) and checks the target stays inside. */
async function followInside(root: string, p: string, rel: string): Promise<string> {
  let real: string;
  try {
    real = await realpath(p);
  } catch (err) {
    if (errno(err) === "ENOENT") throw invalidArgument(`path ${JSON.stringify(rel)} goes through a dangling symlink`);
    throw err;
  }
  if (!within(root, real)) throw outside(rel);
  return real;
}

async function readInside(root: string, rel: string): Promise<JsonObject> {
  const target = lexicalTarget(root, rel);
  const real = await realpath(target);
  if (!within(root, real)) throw outside(rel);
  // stat before open: opening a FIFO or device could block or have side effects.
  if (!(await stat(real)).isFile()) throw invalidArgument(`path ${JSON.stringify(rel)} is not a regular file`);
  const fh = await open(real, READ_FLAGS);
  try {
    await assertOpenedWithin(fh, root, rel);
    const st = await fh.stat();
    if (!st.isFile()) throw invalidArgument(`path ${JSON.stringify(rel)} is not a regular file`);
    refuseHardLink(st.nlink, rel);
    if (st.size > MAX_FILE_BYTES) {
      throw new TaskFailure("FILE_TOO_LARGE", `${JSON.stringify(rel)} is larger than ${MAX_FILE_BYTES} bytes`, false);
    }
    // Read one byte more than allowed to notice a file that grew since fstat.
    const buf = Buffer.alloc(MAX_FILE_BYTES + 1);
    let size = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, size, buf.length - size, size);
      if (bytesRead === 0) break;
      size += bytesRead;
      if (size > MAX_FILE_BYTES) {
        throw new TaskFailure("FILE_TOO_LARGE", `${JSON.stringify(rel)} is larger than ${MAX_FILE_BYTES} bytes`, false);
      }
    }
    return { content: buf.toString("utf8", 0, size), size };
  } finally {
    await fh.close();
  }
}

/**
 * Makes sure the directory that will hold `target` exists inside the root, creating missing
 * directories one level at a time (never `mkdir -p`, which would follow a symlinked directory
 * out of the root). Returns its real path.
 */
async function ensureParentInside(root: string, target: string, rel: string): Promise<string> {
  const parts = relative(root, dirname(target)).split(sep).filter((p) => p !== "");
  let cur = root;
  for (const part of parts) {
    const next = join(cur, part);
    let st;
    try {
      st = await lstat(next);
    } catch (err) {
      if (errno(err) !== "ENOENT") throw err;
      try {
        await mkdir(next);
      } catch (mkErr) {
        // Created by someone else meanwhile: inspect it like any existing entry below.
        if (errno(mkErr) !== "EEXIST") throw mkErr;
      }
      st = await lstat(next);
    }
    if (st.isSymbolicLink()) {
      cur = await followInside(root, next, rel);
      if (!(await stat(cur)).isDirectory()) throw invalidArgument(`path ${JSON.stringify(rel)}: ${part} is not a directory`);
    } else if (st.isDirectory()) {
      cur = next;
    } else {
      throw invalidArgument(`path ${JSON.stringify(rel)}: ${part} is not a directory`);
    }
  }
  const real = await realpath(cur);
  if (!within(root, real)) throw outside(rel);
  return real;
}

async function writeInside(root: string, rel: string, content: string, signal: AbortSignal): Promise<JsonObject> {
  const target = lexicalTarget(root, rel);
  if (target === root) throw invalidArgument("path: names the files root itself");
  const parent = await ensureParentInside(root, target, rel);
  let file = join(parent, basename(target));
  try {
    const st = await lstat(file);
    if (st.isSymbolicLink()) file = await followInside(root, file, rel);
    if ((await stat(file)).isDirectory()) throw invalidArgument(`path ${JSON.stringify(rel)} is a directory`);
  } catch (err) {
    if (errno(err) !== "ENOENT") throw err;
  }
  signal.throwIfAborted();
  const fh = await open(file, WRITE_FLAGS, 0o644);
  try {
    await assertOpenedWithin(fh, root, rel);
    const st = await fh.stat();
    if (!st.isFile()) throw invalidArgument(`path ${JSON.stringify(rel)} is not a regular file`);
    // Checked on the opened file, before anything is truncated.
    refuseHardLink(st.nlink, rel);
    const data = Buffer.from(content, "utf8");
    await fh.truncate(0);
    await fh.write(data, 0, data.length, 0);
    return { written: data.length };
  } finally {
    await fh.close();
  }
}

/**
 * `file_operation` `{ operation: "read"|"write", path, content? }`: read → `{ content, size }`
 * (UTF-8 text, at most {@link MAX_FILE_BYTES}); write → `{ written }` (bytes; parent directories
 * are created). `path` is relative to the task's tenant's root, `<filesRoot>/<tenant>` (tenants
 * never see each other's files). Files with more than one hard link are refused. Absolute
 * paths, `..` escapes and symlinks (of
 * the file or of any directory on the way) that resolve outside the root are refused with
 * INVALID_ARGUMENT, not retried. Paths are checked after resolving symlinks and, on Linux, again
 * on the opened descriptor; a write to an escaping target truncates nothing, though a racing
 * attacker with write access to the root could still make it create an empty file outside.
 */
export function fileOperation(filesRoot: string): TaskHandler {
  return async (payload: JsonObject, ctx: TaskContext) => {
    const operation = requireString(payload, "operation");
    const rel = requireString(payload, "path");
    const content = optionalString(payload, "content");
    if (operation !== "read" && operation !== "write") throw invalidPayload('operation: must be "read" or "write"');
    if (operation === "write" && content === undefined) throw invalidPayload("content: required for write");
    ctx.signal.throwIfAborted();
    try {
      // A tenant's root exists before its first file: a path is judged against it either way.
      const own = tenantRoot(filesRoot, ctx.tenant);
      await mkdir(own, { recursive: true });
      const root = await realpath(own);
      if (operation === "read") return await readInside(root, rel);
      return await writeInside(root, rel, content ?? "", ctx.signal);
    } catch (err) {
      if (ctx.signal.aborted && err === ctx.signal.reason) throw err;
      throw fsFailure(err, rel);
    }
  };
}
