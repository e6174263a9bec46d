# syntax=docker/dockerfile:1
# Longshot controller (REST/SSE API, job runner, stitcher), plus a CPU-only worker target.
#
#   docker build -f deploy/controller.Dockerfile -t longshot-controller .
#   docker build -f deploy/controller.Dockerfile --target worker-cpu -t longshot-worker-cpu .
#
# The controller decodes latents and encodes MP4 (ffmpeg) but never runs the DiT on a GPU, so the
# native addon is built CPU-only (LONGSHOT_CUDA=0) on a plain Debian base: no CUDA images here.
# `worker-cpu` is the same build with the worker entrypoint, for compose and dev clusters where
# pulling the multi-GB CUDA image (deploy/worker.Dockerfile) buys nothing.
# Conventions match deploy/worker.Dockerfile: node at /usr/local/bin/node, repo at /app, user
# longshot (10001:10001), TypeScript sources run through tsx.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: npm ci, then the addon (CPU kernels only) --------------------------------------------
FROM ${NODE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# `npm run build:addon` runs `node-gyp rebuild --nodedir=/usr`; the official image keeps the
# headers under /usr/local, so expose them where that script looks.
RUN ln -s /usr/local/include/node /usr/include/node

WORKDIR /app
# The same install step as a developer's checkout and the worker image (deploy/bootstrap.sh):
# `npm ci` against the committed lock (dependency install scripts are denied in package.json).
COPY package.json package-lock.json tsconfig.json ./
COPY deploy/bootstrap.sh deploy/
COPY libs/ libs/
COPY apps/ apps/
RUN bash deploy/bootstrap.sh npm
# LONGSHOT_CUDA=0: never look for nvcc; the controller needs no GPU.
RUN LONGSHOT_CUDA=0 bash deploy/bootstrap.sh addon \
 && test -f libs/engine/build/Release/longshot_engine.node \
 && rm -rf libs/engine/build/Release/obj.target libs/engine/build/Release/.deps libs/engine/build/Release/*.a .longshot
# Runtime dependencies only (tsx runs the TypeScript sources; node-gyp and vitest are not needed).
RUN npm prune --omit=dev --no-audit --no-fund

# ---- common runtime base ------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime-base
# tini as PID 1: forwards SIGTERM to node (graceful shutdown) and reaps orphaned children.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 longshot \
 && useradd --system --uid 10001 --gid longshot --home-dir /app --shell /usr/sbin/nologin longshot
WORKDIR /app
COPY --from=build --chown=longshot:longshot /app/package.json /app/package-lock.json /app/tsconfig.json ./
COPY --from=build --chown=longshot:longshot /app/node_modules ./node_modules
COPY --from=build --chown=longshot:longshot /app/libs ./libs
# HEALTHCHECK probe: GET with node itself (no curl or wget in the image).
COPY deploy/healthcheck.js deploy/
ENV NODE_ENV=production

# ---- worker-cpu: the worker without CUDA (compose, dev clusters, CI) --------------------------------
FROM runtime-base AS worker-cpu
COPY --from=build --chown=longshot:longshot /app/apps/worker ./apps/worker
ENV LONGSHOT_BACKEND=cpu \
    LONGSHOT_WORKER_HOST=0.0.0.0 \
    LONGSHOT_WORKER_PORT=50051 \
    LONGSHOT_METRICS_PORT=9464
EXPOSE 50051 9464
USER longshot
# Healthy while the worker's process serves its metrics endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD node deploy/healthcheck.js "http://127.0.0.1:${LONGSHOT_METRICS_PORT}/metrics"
ENTRYPOINT ["/usr/bin/tini", "--", "node", "apps/worker/bin/longshot-worker.js"]

# ---- controller (the default target: last stage) -----------------------------------------------------
FROM runtime-base AS controller
# ffmpeg/ffprobe encode the stitched MP4 (libs/media).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build --chown=longshot:longshot /app/apps/controller ./apps/controller
# Results (finished MP4s); mount a volume here (RWX when several replicas share it).
RUN install -d -o longshot -g longshot -m 0775 /var/lib/longshot/results
ENV PORT=8080 \
    HOST=0.0.0.0 \
    LONGSHOT_RESULTS_DIR=/var/lib/longshot/results
EXPOSE 8080
USER longshot
# Liveness only (/healthz): /readyz depends on Redis, and an unhealthy Redis is no reason to restart the controller.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD node deploy/healthcheck.js "http://127.0.0.1:${PORT}/healthz"
ENTRYPOINT ["/usr/bin/tini", "--", "node", "apps/controller/bin/longshot-controller.js"]
