# syntax=docker/dockerfile:1.7
# Switchyard expert worker, CUDA backend (grouped expert GEMM for Hopper, sm_90a). Build from the repository root:
#   docker build -f docker/worker-cuda.Dockerfile -t ghcr.io/switchyard-dev/switchyard-worker:0.1.0-cuda .
# Needs the NVIDIA container runtime on the node (the ExpertPool requests nvidia.com/gpu). Falls back to the
# CPU backend with a log line when no GPU is visible (--backend auto).

ARG CUDA_VERSION=12.8.1
FROM node:20-bookworm-slim AS node

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake make python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx
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
# The native build compiles the CUDA backend (build/switchyard_cuda.node, sm_90a: H100/H200) whenever nvcc is
# present, as it is in this stage. SWITCHYARD_NATIVE_ARCH=0: portable CPU code instead of -march=native.
ENV SWITCHYARD_NATIVE_ARCH=0
RUN npm run build --workspace @switchyard/expert-worker --if-present \
 && test -f expert-worker/build/switchyard_cuda.node \
 && npx tsc -b expert-worker \
 && npm ci --no-audit --no-fund --ignore-scripts --omit=dev

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
LABEL org.opencontainers.image.title="switchyard-worker" \
      org.opencontainers.image.description="Switchyard expert worker (CUDA backend)" \
      org.opencontainers.image.source="https://github.com/switchyard-dev/switchyard" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=node /usr/local/bin/node /usr/local/bin/node
ENV NODE_ENV=production SWITCHYARD_BACKEND=auto
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules/ node_modules/
COPY --from=build /src/packages/protocol/package.json packages/protocol/
COPY --from=build /src/packages/protocol/dist/ packages/protocol/dist/
COPY --from=build /src/packages/moe/package.json packages/moe/
COPY --from=build /src/packages/moe/dist/ packages/moe/dist/
COPY --from=build /src/expert-worker/package.json expert-worker/
COPY --from=build /src/expert-worker/dist/ expert-worker/dist/
COPY --from=build /src/expert-worker/build/switchyard_native.node /src/expert-worker/build/switchyard_cuda.node expert-worker/build/
USER 10001:10001
# gRPC, the router's TCP data path (--data-port 50062 from the operator), metrics
EXPOSE 50061 50062 9401
# --initial-heap-size: the data-path V8 flags of packages/moe/src/node-flags.ts (keep them in step).
ENTRYPOINT ["node", "--initial-heap-size=256", "expert-worker/dist/main.js"]
