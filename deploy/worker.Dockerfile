# syntax=docker/dockerfile:1
# Longshot worker with the CUDA backend.
#
#   docker build -f deploy/worker.Dockerfile -t longshot-worker .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 -e REDIS_URL=redis://redis:6379 longshot-worker
#
# Building needs no GPU: nvcc compiles the kernels for sm_80/sm_90 (+ compute_90 PTX), and the
# addon links the CUDA runtime statically and opens libcuda/libcublas at run time. At run time
# the NVIDIA container runtime provides the driver (libcuda); the -runtime base image provides
# libcublas.so.12. The same image runs CPU-only on a host without a GPU (LONGSHOT_BACKEND=auto).

ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu22.04

# Official Node 20 binaries (glibc builds; Ubuntu 22.04's glibc 2.35 is new enough).
FROM node:20-bookworm-slim AS node

# ---- build: npm ci, then the addon with nvcc ----------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/include/node /usr/local/include/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx

WORKDIR /app
# The same install step as a developer's checkout (deploy/bootstrap.sh): `npm ci` against the
# committed lock (dependency install scripts are denied in package.json), then the addon.
# Manifests first so the dependency layer is cached until a manifest changes.
COPY package.json package-lock.json tsconfig.json ./
COPY deploy/bootstrap.sh deploy/
COPY libs/ libs/
COPY apps/ apps/
RUN bash deploy/bootstrap.sh npm
# LONGSHOT_CUDA=1 makes the build fail if the toolkit is not found rather than quietly build CPU-only.
# The addon's build script looks for Node's headers under /usr; this image keeps them in /usr/local.
ENV LONGSHOT_CUDA=1 CUDA_HOME=/usr/local/cuda
RUN ln -s /usr/local/include/node /usr/include/node \
 && bash deploy/bootstrap.sh addon \
 && test -f libs/engine/build/Release/longshot_engine.node \
 && rm -rf libs/engine/build/Release/obj.target libs/engine/build/Release/.deps libs/engine/build/Release/*.a .longshot
# Runtime dependencies only (tsx runs the TypeScript sources; node-gyp and vitest are not needed).
RUN npm prune --omit=dev --no-audit --no-fund

# ---- runtime ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime
# tini as PID 1: forwards SIGTERM to node (graceful shutdown: sessions closed, registry entry
# removed) and reaps orphaned children.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
RUN groupadd --system --gid 10001 longshot \
 && useradd --system --uid 10001 --gid longshot --home-dir /app --shell /usr/sbin/nologin longshot
WORKDIR /app
COPY --from=build --chown=longshot:longshot /app/package.json /app/package-lock.json ./
COPY --from=build --chown=longshot:longshot /app/node_modules ./node_modules
COPY --from=build --chown=longshot:longshot /app/libs ./libs
COPY --from=build --chown=longshot:longshot /app/apps/worker ./apps/worker
# HEALTHCHECK probe: GET with node itself (no curl or wget in the image).
COPY deploy/healthcheck.js deploy/

ENV NODE_ENV=production \
    LONGSHOT_BACKEND=auto \
    LONGSHOT_WORKER_HOST=0.0.0.0 \
    LONGSHOT_WORKER_PORT=50051 \
    LONGSHOT_DATA_PLANE_PORT=50052 \
    LONGSHOT_METRICS_PORT=9464 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# gRPC (stage sessions), the native data plane (tensor bytes), Prometheus /metrics
EXPOSE 50051 50052 9464
USER longshot
# Healthy while the worker's process serves its metrics endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD node deploy/healthcheck.js "http://127.0.0.1:${LONGSHOT_METRICS_PORT}/metrics"
ENTRYPOINT ["/usr/bin/tini", "--", "node", "apps/worker/bin/longshot-worker.js"]
