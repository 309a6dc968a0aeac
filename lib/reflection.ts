import { create, fromBinary, toBinary, type DescEnum, type DescFile, type DescMessage } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";

/**
 * An index of protobuf files for gRPC server reflection: every file given and its transitive
 * dependencies, by file name, by fully-qualified symbol and by extension. Built once from the
 * descriptors protoc-gen-es embeds in `gen/` (`GenFile`), so no `.proto` files are needed at run
 * time. Serialized descriptors are cached on first use.
 */
export class ReflectionIndex {
  readonly #files = new Map<string, DescFile>();
  readonly #symbols = new Map<string, DescFile>();
  /** `extendee type name` → field number → file declaring the extension. */
  readonly #extensions = new Map<string, Map<number, DescFile>>();
  readonly #encoded = new Map<DescFile, Uint8Array>();

  /** Indexes `files` and, transitively, everything they import. */
  constructor(files: Iterable<DescFile>) {
    for (const file of files) this.#addFile(file);
  }

  /** Looks a file up by its path (`taskmesh/v1/task.proto`). */
  fileByName(name: string): DescFile | undefined {
    return this.#files.get(name);
  }

  /**
   * Finds the file declaring a fully-qualified symbol: a service, method, message, field, oneof,
   * enum, enum value or extension, nested ones included (`pkg.Outer.Inner`).
   */
  fileContainingSymbol(symbol: string): DescFile | undefined {
    return this.#symbols.get(symbol.startsWith(".") ? symbol.slice(1) : symbol);
  }

  /** Finds the file declaring the extension `number` of message `extendee`. */
  fileContainingExtension(extendee: string, number: number): DescFile | undefined {
    return this.#extensions.get(extendee)?.get(number);
  }

  /** Field numbers of all known extensions of `extendee`, or undefined for an unknown message. */
  extensionNumbersOf(extendee: string): number[] | undefined {
    const symbolFile = this.#symbols.get(extendee);
    if (symbolFile === undefined) return undefined;
    return [...(this.#extensions.get(extendee)?.keys() ?? [])];
  }

  /**
   * `file` serialized as a FileDescriptorProto, followed by each of its transitive dependencies,
   * every file exactly once: what a reflection client needs to build the file's descriptors.
   */
  encodedWithDependencies(file: DescFile): Uint8Array[] {
    const out: Uint8Array[] = [];
    const seen = new Set<DescFile>();
    const visit = (f: DescFile): void => {
      if (seen.has(f)) return;
      seen.add(f);
      out.push(this.#encode(f));
      for (const dep of f.dependencies) visit(dep);
    };
    visit(file);
    return out;
  }

  #encode(file: DescFile): Uint8Array {
    let bytes = this.#encoded.get(file);
    if (bytes === undefined) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      this.#encoded.set(file, bytes);
    }
    return bytes;
  }

  #addFile(file: DescFile): void {
    const name = file.proto.name;
    if (this.#files.has(name)) return;
    this.#files.set(name, file);
    for (const dep of file.dependencies) this.#addFile(dep);
    for (const message of file.messages) this.#addMessage(file, message);
    for (const desc of file.enums) this.#addEnum(file, desc);
    for (const ext of file.extensions) this.#addExtension(file, ext.typeName, ext.extendee.typeName, ext.number);
    for (const service of file.services) {
      this.#symbols.set(service.typeName, file);
      for (const method of service.methods) this.#symbols.set(`${service.typeName}.${method.name}`, file);
    }
  }

  #addMessage(file: DescFile, message: DescMessage): void {
    this.#symbols.set(message.typeName, file);
    for (const field of message.fields) this.#symbols.set(`${message.typeName}.${field.name}`, file);
    for (const oneof of message.oneofs) this.#symbols.set(`${message.typeName}.${oneof.name}`, file);
    for (const nested of message.nestedMessages) this.#addMessage(file, nested);
    for (const nested of message.nestedEnums) this.#addEnum(file, nested);
    for (const ext of message.nestedExtensions) {
      this.#addExtension(file, ext.typeName, ext.extendee.typeName, ext.number);
    }
  }

  #addEnum(file: DescFile, desc: DescEnum): void {
    this.#symbols.set(desc.typeName, file);
    // Enum values are scoped as siblings of their enum (C++ scoping): `pkg.VALUE`, not `pkg.Enum.VALUE`.
    const scope = desc.typeName.slice(0, desc.typeName.length - desc.name.length);
    for (const value of desc.values) this.#symbols.set(`${scope}${value.name}`, file);
  }

  #addExtension(file: DescFile, typeName: string, extendee: string, number: number): void {
    this.#symbols.set(typeName, file);
    let byNumber = this.#extensions.get(extendee);
    if (byNumber === undefined) {
      byNumber = new Map();
      this.#extensions.set(extendee, byNumber);
    }
    byNumber.set(number, file);
  }
}

/** The files of the reflection services themselves, which reflection also describes. */
export const REFLECTION_FILES: readonly DescFile[] = [
  v1.file_grpc_reflection_v1_reflection,
  v1alpha.file_grpc_reflection_v1alpha_reflection,
];

/** Full names of the two reflection services registered by {@link registerReflectionServices}. */
export const REFLECTION_SERVICE_NAMES: readonly string[] = [
  v1.ServerReflection.typeName,
  v1alpha.ServerReflection.typeName,
];

function notFound(message: string): v1.ServerReflectionResponse["messageResponse"] {
  return {
    case: "errorResponse",
    value: create(v1.ErrorResponseSchema, { errorCode: Code.NotFound, errorMessage: message }),
  };
}

/** Answers one v1 reflection request. */
function answer(
  index: ReflectionIndex,
  services: () => readonly string[],
  req: v1.ServerReflectionRequest,
): v1.ServerReflectionResponse {
  const files = (file: DescFile | undefined, what: string): v1.ServerReflectionResponse["messageResponse"] =>
    file === undefined
      ? notFound(`${what} not found`)
      : {
          case: "fileDescriptorResponse",
          value: create(v1.FileDescriptorResponseSchema, { fileDescriptorProto: index.encodedWithDependencies(file) }),
        };
  let messageResponse: v1.ServerReflectionResponse["messageResponse"];
  const r = req.messageRequest;
  switch (r.case) {
    case "fileByFilename":
      messageResponse = files(index.fileByName(r.value), `file ${JSON.stringify(r.value)}`);
      break;
    case "fileContainingSymbol":
      messageResponse = files(index.fileContainingSymbol(r.value), `symbol ${JSON.stringify(r.value)}`);
      break;
    case "fileContainingExtension":
      messageResponse = files(
        index.fileContainingExtension(r.value.containingType, r.value.extensionNumber),
        `extension ${r.value.extensionNumber} of ${JSON.stringify(r.value.containingType)}`,
      );
      break;
    case "allExtensionNumbersOfType": {
      const numbers = index.extensionNumbersOf(r.value);
      messageResponse =
        numbers === undefined
          ? notFound(`type ${JSON.stringify(r.value)} not found`)
          : {
              case: "allExtensionNumbersResponse",
              value: create(v1.ExtensionNumberResponseSchema, { baseTypeName: r.value, extensionNumber: numbers }),
            };
      break;
    }
    case "listServices":
      messageResponse = {
        case: "listServicesResponse",
        value: create(v1.ListServiceResponseSchema, { service: services().map((name) => ({ name })) }),
      };
      break;
    case undefined:
      messageResponse = {
        case: "errorResponse",
        value: create(v1.ErrorResponseSchema, { errorCode: Code.InvalidArgument, errorMessage: "empty request" }),
      };
      break;
  }
  return create(v1.ServerReflectionResponseSchema, { validHost: req.host, originalRequest: req, messageResponse });
}

/**
 * Registers gRPC server reflection, `grpc.reflection.v1.ServerReflection` and the older
 * `v1alpha` (same wire format; still the one many clients try), so `buf curl` and `grpcurl` work
 * with no proto files. `files` are the served files (their dependencies are found by walking
 * imports; the reflection files themselves are added here); `services` lists the served
 * services' full names at request time. Every file response carries the requested file and all
 * its transitive dependencies, each once, on every request (clients cache; this is simpler than
 * tracking what a stream has already received, which the spec allows but does not require).
 */
export function registerReflectionServices(
  router: ConnectRouter,
  files: Iterable<DescFile>,
  services: () => readonly string[],
): ReflectionIndex {
  const index = new ReflectionIndex([...files, ...REFLECTION_FILES]);
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield answer(index, services, req);
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      // v1alpha and v1 messages are identical on the wire: translate through bytes.
      for await (const req of requests) {
        const res = answer(index, services, fromBinary(v1.ServerReflectionRequestSchema, toBinary(v1alpha.ServerReflectionRequestSchema, req)));
        yield fromBinary(v1alpha.ServerReflectionResponseSchema, toBinary(v1.ServerReflectionResponseSchema, res));
      }
    },
  });
  return index;
}
