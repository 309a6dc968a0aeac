/**
 * HTTP path templates and route bindings as defined by `google/api/http.proto`: parses the
 * templates of `google.api.http` annotations, reads the annotations of service descriptors into
 * bindings, and matches request paths against them.
 *
 * Template grammar (http.proto):
 *
 *     Template = "/" Segments [ Verb ] ;
 *     Segments = Segment { "/" Segment } ;
 *     Segment  = "*" | "**" | LITERAL | Variable ;
 *     Variable = "{" FieldPath [ "=" Segments ] "}" ;
 *     FieldPath = IDENT { "." IDENT } ;
 *     Verb     = ":" LITERAL ;
 */
import { getOption, hasOption, type DescField, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { http } from "../../../gen/google/api/annotations_pb.js";
import type { HttpRule } from "../../../gen/google/api/http_pb.js";

/** One segment of a parsed template: a literal, `*` (exactly one segment) or `**` (the rest). */
export type TemplateSegment =
  | { readonly kind: "literal"; readonly value: string }
  | { readonly kind: "wildcard" }
  | { readonly kind: "deep" };

/** A `{field.path=segments}` variable of a template: the span of segments it captures. */
export interface TemplateVariable {
  /** The field path as written, split on dots: `{a.b}` → `["a", "b"]`. */
  readonly fieldPath: readonly string[];
  /** Index of the first segment the variable covers. */
  readonly start: number;
  /** Index after the last segment it covers (for a trailing `**`: the template's segment count). */
  readonly end: number;
  /**
   * True when the capture may hold several segments (`**`, or more than one segment): it is then
   * decoded by the "reserved expansion" rule, keeping `%2F` and the other reserved escapes.
   */
  readonly multiSegment: boolean;
}

/** A parsed path template. */
export interface PathTemplate {
  /** The template as written in the annotation. */
  readonly source: string;
  readonly segments: readonly TemplateSegment[];
  readonly variables: readonly TemplateVariable[];
  /** The custom verb after the last `:` (`cancel` in `/v1/tasks/{task_id}:cancel`), if any. */
  readonly verb: string | undefined;
}

/** Thrown by {@link parsePathTemplate} and {@link restBindings} for an invalid annotation. */
export class TemplateError extends Error {
  override name = "TemplateError";
}

/** Thrown by {@link matchPathTemplate} when a captured segment is not valid percent-encoding. */
export class PathDecodeError extends Error {
  override name = "PathDecodeError";
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
// Literals are URL path characters other than the template's own syntax.
const LITERAL = /^[A-Za-z0-9\-._~%!$&'()+,;=@]+$/;

/**
 * Parses a `google.api.http` path template. Throws {@link TemplateError} on bad syntax, on a
 * nested variable, or on a `**` anywhere but the last segment (the matcher relies on that).
 */
export function parsePathTemplate(source: string): PathTemplate {
  const fail = (why: string): never => {
    throw new TemplateError(`invalid path template ${JSON.stringify(source)}: ${why}`);
  };
  if (!source.startsWith("/")) fail("must start with /");
  // The verb is the part after a ':' that is outside braces and after the last '/' outside braces.
  let depth = 0;
  let colon = -1;
  let lastSlash = -1;
  for (let i = 0; i < source.length; i++) {
    const ch = source[i];
    if (ch === "{") depth++;
    else if (ch === "}") depth--;
    else if (depth === 0 && ch === "/") lastSlash = i;
    else if (depth === 0 && ch === ":") colon = i;
    if (depth < 0 || depth > 1) fail("unbalanced or nested braces");
  }
  if (depth !== 0) fail("unbalanced braces");
  let verb: string | undefined;
  let body = source.slice(1);
  if (colon > lastSlash) {
    verb = source.slice(colon + 1);
    if (!LITERAL.test(verb)) fail("invalid verb");
    body = source.slice(1, colon);
  }

  const segments: TemplateSegment[] = [];
  const variables: TemplateVariable[] = [];
  const pieces = splitOutsideBraces(body);
  for (const piece of pieces) {
    if (piece.startsWith("{")) {
      if (!piece.endsWith("}")) fail(`bad variable ${piece}`);
      const inner = piece.slice(1, -1);
      const eq = inner.indexOf("=");
      const fieldPath = (eq < 0 ? inner : inner.slice(0, eq)).split(".");
      if (!fieldPath.every((p) => IDENT.test(p))) fail(`bad field path in ${piece}`);
      const sub = eq < 0 ? ["*"] : inner.slice(eq + 1).split("/");
      const start = segments.length;
      for (const s of sub) segments.push(plainSegment(s, fail));
      const covered = segments.slice(start);
      if (variables.some((v) => v.fieldPath.join(".") === fieldPath.join("."))) fail(`field ${fieldPath.join(".")} bound twice`);
      variables.push({
        fieldPath,
        start,
        end: segments.length,
        multiSegment: covered.length > 1 || covered.some((s) => s.kind === "deep"),
      });
    } else {
      segments.push(plainSegment(piece, fail));
    }
  }
  const deep = segments.findIndex((s) => s.kind === "deep");
  if (deep >= 0 && deep !== segments.length - 1) fail("** must be the last segment");
  return { source, segments, variables, verb };
}

function splitOutsideBraces(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = "";
  for (const ch of s) {
    if (ch === "{") depth++;
    if (ch === "}") depth--;
    if (ch === "/" && depth === 0) {
      out.push(cur);
      cur = "";
    } else {
      cur += ch;
    }
  }
  out.push(cur);
  return out;
}

function plainSegment(s: string, fail: (why: string) => never): TemplateSegment {
  if (s === "*") return { kind: "wildcard" };
  if (s === "**") return { kind: "deep" };
  if (!LITERAL.test(s)) fail(`bad segment ${JSON.stringify(s)}`);
  return { kind: "literal", value: s };
}

/**
 * Matches a request path (no query string) against a template and returns the captured variables
 * by dotted field path, percent-decoded; `undefined` when it does not match. A `**` capture needs
 * at least one segment (so `PUT /v1/config` never reaches a handler with an empty namespace) and
 * keeps its `/` separators; reserved escapes such as `%2F` stay encoded there (http.proto's
 * reserved expansion), everything else is decoded. Empty segments never match `*` or `**`.
 * Throws {@link PathDecodeError} for malformed percent-encoding in a captured segment.
 */
export function matchPathTemplate(template: PathTemplate, path: string): Map<string, string> | undefined {
  if (!path.startsWith("/")) return undefined;
  let rest = path.slice(1);
  if (template.verb !== undefined) {
    const suffix = `:${template.verb}`;
    if (!rest.endsWith(suffix)) return undefined;
    rest = rest.slice(0, -suffix.length);
  }
  const parts = rest.split("/");
  const segs = template.segments;
  const last = segs[segs.length - 1];
  const deep = last?.kind === "deep";
  if (deep ? parts.length < segs.length : parts.length !== segs.length) return undefined;
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i];
    if (seg === undefined) return undefined;
    if (seg.kind === "literal") {
      if (parts[i] !== seg.value) return undefined;
    } else if (seg.kind === "wildcard") {
      if (parts[i] === "") return undefined;
    } else if (parts.slice(i).some((p) => p === "")) {
      return undefined;
    }
  }
  const captures = new Map<string, string>();
  for (const v of template.variables) {
    const end = deep && v.end === segs.length ? parts.length : v.end;
    const raw = parts.slice(v.start, end);
    const decoded = raw.map((p) => decodeSegment(p, v.multiSegment));
    captures.set(v.fieldPath.join("."), decoded.join("/"));
  }
  return captures;
}

// RFC 6570 reserved characters, percent-encoded: gen-delims and sub-delims.
const RESERVED_ESCAPE = /(%(?:3A|2F|3F|23|5B|5D|40|21|24|26|27|28|29|2A|2B|2C|3B|3D))/i;

function decodeSegment(segment: string, keepReserved: boolean): string {
  try {
    if (!keepReserved) return decodeURIComponent(segment);
    return segment
      .split(RESERVED_ESCAPE)
      .map((piece, i) => (i % 2 === 1 ? piece : decodeURIComponent(piece)))
      .join("");
  } catch {
    throw new PathDecodeError(`malformed percent-encoding in path segment ${JSON.stringify(segment)}`);
  }
}

/** A path variable resolved against the request message. */
export interface BoundPathField {
  readonly variable: TemplateVariable;
  /** The fields from the request message down to the bound leaf (singular messages, then a scalar or enum). */
  readonly fields: readonly DescField[];
}

/** One HTTP binding of an RPC method: the main `google.api.http` rule or an additional binding. */
export interface RestBinding {
  readonly service: DescService;
  readonly method: DescMethod;
  /** Upper-case HTTP method (`GET`, `POST`, ..., or a custom rule's kind). */
  readonly httpMethod: string;
  readonly template: PathTemplate;
  readonly pathFields: readonly BoundPathField[];
  /** `""` (no body), `"*"` (the whole message) or a top-level field name. */
  readonly body: string;
  /** The request field the body maps to when `body` names one. */
  readonly bodyField: DescField | undefined;
  /** The response field sent as the HTTP body when `response_body` is set. */
  readonly responseBodyField: DescField | undefined;
  /** 0 for the main rule, 1… for `additional_bindings` in order. */
  readonly bindingIndex: number;
}

/**
 * Reads the `google.api.http` annotations of every method of the given services into bindings
 * (the main rule and its `additional_bindings`). Methods without the annotation are skipped.
 * Throws {@link TemplateError} on an annotation that cannot be served: a bad template, a path
 * variable naming no field (or a repeated, map or message leaf), a body or response_body naming no
 * top-level field, the same HTTP method and template bound twice, or an annotated client- or
 * bidi-streaming method (REST has no request stream).
 */
export function restBindings(services: readonly DescService[]): RestBinding[] {
  const out: RestBinding[] = [];
  const seen = new Map<string, string>();
  for (const service of services) {
    for (const method of service.methods) {
      if (!hasOption(method, http)) continue;
      const where = `${service.typeName}.${method.name}`;
      if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") {
        throw new TemplateError(`${where}: ${method.methodKind} methods cannot be transcoded to REST`);
      }
      const rule = getOption(method, http);
      const rules: HttpRule[] = [rule, ...rule.additionalBindings];
      rules.forEach((r, bindingIndex) => {
        if (bindingIndex > 0 && r.additionalBindings.length > 0) {
          throw new TemplateError(`${where}: additional_bindings must not nest`);
        }
        const binding = bindingFromRule(service, method, r, bindingIndex, where);
        const key = `${binding.httpMethod} ${binding.template.source}`;
        const dup = seen.get(key);
        if (dup !== undefined) throw new TemplateError(`${where}: ${key} is already bound to ${dup}`);
        seen.set(key, where);
        out.push(binding);
      });
    }
  }
  return out;
}

function bindingFromRule(service: DescService, method: DescMethod, rule: HttpRule, bindingIndex: number, where: string): RestBinding {
  let httpMethod: string;
  let path: string;
  switch (rule.pattern.case) {
    case "get":
    case "put":
    case "post":
    case "delete":
    case "patch":
      httpMethod = rule.pattern.case.toUpperCase();
      path = rule.pattern.value;
      break;
    case "custom":
      httpMethod = rule.pattern.value.kind.toUpperCase();
      path = rule.pattern.value.path;
      break;
    case undefined:
      throw new TemplateError(`${where}: google.api.http rule without a pattern`);
  }
  let template: PathTemplate;
  try {
    template = parsePathTemplate(path);
  } catch (err) {
    throw new TemplateError(`${where}: ${(err as Error).message}`);
  }
  const input = method.input;
  const pathFields = template.variables.map((variable): BoundPathField => {
    const fields: DescField[] = [];
    let msg = input;
    variable.fieldPath.forEach((name, i) => {
      const f = findField(msg, name);
      const label = variable.fieldPath.join(".");
      if (f === undefined) throw new TemplateError(`${where}: path variable ${label}: no field ${name} in ${msg.typeName}`);
      fields.push(f);
      const isLast = i === variable.fieldPath.length - 1;
      if (!isLast) {
        if (f.fieldKind !== "message") throw new TemplateError(`${where}: path variable ${label}: ${name} is not a singular message`);
        msg = f.message;
      } else if (f.fieldKind !== "scalar" && f.fieldKind !== "enum") {
        throw new TemplateError(`${where}: path variable ${label} must name a singular scalar or enum field`);
      }
    });
    return { variable, fields };
  });
  let bodyField: DescField | undefined;
  if (rule.body !== "" && rule.body !== "*") {
    bodyField = findField(input, rule.body);
    if (bodyField === undefined) throw new TemplateError(`${where}: body ${rule.body}: no such field in ${input.typeName}`);
  }
  let responseBodyField: DescField | undefined;
  if (rule.responseBody !== "") {
    responseBodyField = findField(method.output, rule.responseBody);
    if (responseBodyField === undefined) {
      throw new TemplateError(`${where}: response_body ${rule.responseBody}: no such field in ${method.output.typeName}`);
    }
  }
  return { service, method, httpMethod, template, pathFields, body: rule.body, bodyField, responseBodyField, bindingIndex };
}

/** Looks a field up by its proto name or its JSON (lowerCamelCase) name. */
export function findField(message: { readonly fields: readonly DescField[] }, name: string): DescField | undefined {
  return message.fields.find((f) => f.name === name) ?? message.fields.find((f) => f.jsonName === name);
}

/** The outcome of {@link RestRouter.match}. */
export type RouteMatch =
  | { readonly kind: "match"; readonly binding: RestBinding; readonly captures: ReadonlyMap<string, string> }
  | { readonly kind: "method-not-allowed"; readonly allow: readonly string[] }
  | { readonly kind: "not-found" };

/**
 * Matches requests to bindings. Templates with a verb that matches the path take precedence over
 * templates without one (so `GET /v1/tasks/x:cancel` is a 405 for `:cancel`, not a GetTask of
 * task `x:cancel`); inside a tier the most specific template wins (literal before `*` before `**`,
 * segment by segment). A path that some template matches but not for this HTTP method gives the
 * methods that would work (for `Allow`).
 */
export class RestRouter {
  readonly #bindings: readonly RestBinding[];

  constructor(bindings: readonly RestBinding[]) {
    // Sort once: verb templates first, then by specificity, so the first hit wins.
    this.#bindings = [...bindings].sort(compareBindings);
  }

  /** All bindings, most specific first. */
  get bindings(): readonly RestBinding[] {
    return this.#bindings;
  }

  /**
   * Finds the binding for an HTTP method and a raw request path (percent-encoded, no query).
   * Throws {@link PathDecodeError} when the matching template's captures are malformed.
   */
  match(httpMethod: string, path: string): RouteMatch {
    const method = httpMethod.toUpperCase();
    let tierHasVerb: boolean | undefined;
    const allow = new Set<string>();
    for (const binding of this.#bindings) {
      const hasVerb = binding.template.verb !== undefined;
      // Bindings are sorted with verb templates first: once a tier matched, later tiers don't count.
      if (tierHasVerb !== undefined && hasVerb !== tierHasVerb) break;
      const captures = matchTemplateShape(binding.template, path);
      if (!captures) continue;
      tierHasVerb = hasVerb;
      if (binding.httpMethod === method) {
        const values = matchPathTemplate(binding.template, path);
        if (values !== undefined) return { kind: "match", binding, captures: values };
      }
      allow.add(binding.httpMethod);
    }
    if (allow.size > 0) return { kind: "method-not-allowed", allow: [...allow].sort() };
    return { kind: "not-found" };
  }
}

/** Whether the path has the template's shape, without decoding (decoding can throw). */
function matchTemplateShape(template: PathTemplate, path: string): boolean {
  const stripped: PathTemplate = { ...template, variables: [] };
  return matchPathTemplate(stripped, path) !== undefined;
}

const SEGMENT_RANK: Record<TemplateSegment["kind"], number> = { literal: 0, wildcard: 1, deep: 2 };

function compareBindings(a: RestBinding, b: RestBinding): number {
  const av = a.template.verb === undefined ? 1 : 0;
  const bv = b.template.verb === undefined ? 1 : 0;
  if (av !== bv) return av - bv;
  const n = Math.max(a.template.segments.length, b.template.segments.length);
  for (let i = 0; i < n; i++) {
    const sa = a.template.segments[i];
    const sb = b.template.segments[i];
    if (sa === undefined || sb === undefined) return sa === undefined ? 1 : -1;
    const d = SEGMENT_RANK[sa.kind] - SEGMENT_RANK[sb.kind];
    if (d !== 0) return d;
  }
  return 0;
}

/** Well-known types whose JSON form is a string or a scalar: settable from one query value. */
export const JSON_SCALAR_WKT: ReadonlySet<string> = new Set([
  "google.protobuf.Duration",
  "google.protobuf.Timestamp",
  "google.protobuf.FieldMask",
  "google.protobuf.DoubleValue",
  "google.protobuf.FloatValue",
  "google.protobuf.Int64Value",
  "google.protobuf.UInt64Value",
  "google.protobuf.Int32Value",
  "google.protobuf.UInt32Value",
  "google.protobuf.BoolValue",
  "google.protobuf.StringValue",
  "google.protobuf.BytesValue",
]);
