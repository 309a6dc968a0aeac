# One image for every taskmesh service; the first argument (or TASKMESH_SERVICE) picks which:
#   docker build -t taskmesh .
#   docker run --rm taskmesh gateway --help
# TypeScript runs through tsx (a runtime dependency), so there is no build step: the image holds
# the production dependencies, the generated code in gen/ and the sources.
FROM node:20-bookworm-slim

# A container's loopback is its own: services listen on every interface.
ENV NODE_ENV=production \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    TASKMESH_GATEWAY_HOST=0.0.0.0 \
    TASKMESH_SCHEDULER_HOST=0.0.0.0 \
    TASKMESH_WORKER_HOST=0.0.0.0 \
    TASKMESH_CONFIG_HOST=0.0.0.0 \
    TASKMESH_WORKER_FILES_ROOT=/app/.taskmesh/files

WORKDIR /app

# openssl makes the mesh's certificates (`certs`, scripts/certs.ts; docs/security.md).
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/*

# Dependencies first: this layer is rebuilt only when the lockfile changes.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

COPY tsconfig.json ./
COPY gen ./gen
COPY lib ./lib
COPY services ./services
COPY scripts/certs.ts ./scripts/certs.ts
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.mjs ./deploy/docker/

# Services write their last-known-good config under .taskmesh/cache; workers' file_operation
# tasks live under .taskmesh/files, the mesh's certificates under .taskmesh/tls (volumes in
# docker-compose.yml). Run as the image's unprivileged `node` user.
RUN mkdir -p .taskmesh/cache .taskmesh/files .taskmesh/tls && chown -R node:node .taskmesh
USER node

# Gateway 8080, scheduler 8081, config 8082, worker 8090 (each service uses one).
EXPOSE 8080 8081 8082 8090

ENTRYPOINT ["/bin/sh", "/app/deploy/docker/entrypoint.sh"]
CMD ["gateway"]
