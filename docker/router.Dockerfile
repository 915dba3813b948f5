# syntax=docker/dockerfile:1.7
# Switchyard router image. Build from the repository root:
#   docker build -f docker/router.Dockerfile -t ghcr.io/switchyard-dev/switchyard-router:0.1.0 .
# Runs `node router-service/dist/main.js` (flags come from the chart: --config, --port, --metrics-port, --data-port).

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
COPY router-service/ router-service/
COPY scripts/build-native.mjs scripts/
# Two addons: the router's own (router-service/native: the combine, the router logits and the gate's top-k) and the
# expert worker's CPU kernels (expert-worker/native), which run a shared expert the router computes itself
# (placement.sharedExperts: Router, or a width that does not split into slices; checkpoint-model.ts sharedBatch).
# Without the latter that runs in TypeScript on the event loop: 58.6 ms a token for Qwen1.5-MoE's shared expert
# against 1.7 (router-service/README.md). No nvcc here, so it is built for the CPU only; it needs only libstdc++.
# SWITCHYARD_NATIVE_ARCH=0: portable x86-64-v3 code instead of -march=native of the build machine.
ENV SWITCHYARD_NATIVE_ARCH=0
RUN npm run build --workspace @switchyard/router-service \
 && npm run build --workspace @switchyard/expert-worker \
 && npx tsc -b router-service \
 && npm ci --no-audit --no-fund --ignore-scripts --omit=dev

FROM node:20-bookworm-slim
LABEL org.opencontainers.image.title="switchyard-router" \
      org.opencontainers.image.description="Switchyard router: gating, expert-aware batching, dispatch and combine" \
      org.opencontainers.image.source="https://github.com/switchyard-dev/switchyard" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules/ node_modules/
COPY --from=build /src/packages/protocol/package.json packages/protocol/
COPY --from=build /src/packages/protocol/dist/ packages/protocol/dist/
COPY --from=build /src/packages/moe/package.json packages/moe/
COPY --from=build /src/packages/moe/dist/ packages/moe/dist/
COPY --from=build /src/expert-worker/package.json expert-worker/
COPY --from=build /src/expert-worker/dist/ expert-worker/dist/
COPY --from=build /src/router-service/package.json router-service/
COPY --from=build /src/router-service/dist/ router-service/dist/
COPY --from=build /src/router-service/build/switchyard_router.node router-service/build/
COPY --from=build /src/expert-worker/build/switchyard_native.node expert-worker/build/
USER 10001:10001
# gRPC, the engines' TCP data path (--data-port, default 50052), metrics (router-service/src/args.ts)
EXPOSE 50051 50052 9400
# --initial-heap-size: the data-path V8 flags of packages/moe/src/node-flags.ts (keep them in step).
ENTRYPOINT ["node", "--initial-heap-size=256", "router-service/dist/main.js"]
