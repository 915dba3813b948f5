# syntax=docker/dockerfile:1.7
# Switchyard expert worker, CPU backend (native C++: its own SIMD kernels and threads, no BLAS). Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t ghcr.io/switchyard-dev/switchyard-worker:0.1.0 .
# Runs `node expert-worker/dist/main.js` (flags from the operator: --checkpoint, --pool, --worker-id, ...).

FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.base.json tsconfig.json ./
COPY packages/protocol/package.json packages/protocol/
COPY packages/moe/package.json packages/moe/
COPY expert-worker/package.json expert-worker/
COPY router-service/package.json router-service/
COPY operator/package.json operator/
COPY test/package.json test/
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY packages/ packages/
COPY expert-worker/ expert-worker/
# The CMake driver shared by the worker and router addons.
COPY scripts/build-native.mjs scripts/
# SWITCHYARD_NATIVE_ARCH=0: portable x86-64 code instead of -march=native of the build machine.
ENV SWITCHYARD_NATIVE_ARCH=0
RUN npm run build --workspace @switchyard/expert-worker --if-present \
 && npx tsc -b expert-worker \
 && npm ci --no-audit --no-fund --ignore-scripts --omit=dev

FROM node:20-bookworm-slim
LABEL org.opencontainers.image.title="switchyard-worker" \
      org.opencontainers.image.description="Switchyard expert worker (CPU backend)" \
      org.opencontainers.image.source="https://github.com/switchyard-dev/switchyard" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production SWITCHYARD_BACKEND=cpu
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules/ node_modules/
COPY --from=build /src/packages/protocol/package.json packages/protocol/
COPY --from=build /src/packages/protocol/dist/ packages/protocol/dist/
COPY --from=build /src/packages/moe/package.json packages/moe/
COPY --from=build /src/packages/moe/dist/ packages/moe/dist/
COPY --from=build /src/expert-worker/package.json expert-worker/
COPY --from=build /src/expert-worker/dist/ expert-worker/dist/
COPY --from=build /src/expert-worker/build/switchyard_native.node expert-worker/build/
USER 10001:10001
# gRPC, the router's TCP data path (--data-port 50062 from the operator), metrics
EXPOSE 50061 50062 9401
# --initial-heap-size: the data-path V8 flags of packages/moe/src/node-flags.ts (keep them in step).
ENTRYPOINT ["node", "--initial-heap-size=256", "expert-worker/dist/main.js"]
