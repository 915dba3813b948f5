# syntax=docker/dockerfile:1.7
# Switchyard operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/switchyard-dev/switchyard-operator:0.1.0 .
# Runs `node operator/dist/main.js` (flags come from the chart: --metrics-port, --health-port, --leader-elect).

FROM node:20-bookworm AS build
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
COPY operator/ operator/
# tsc -b follows the project references, so this builds protocol and moe too. No native code in this image.
RUN npx tsc -b operator \
 && npm ci --no-audit --no-fund --ignore-scripts --omit=dev

FROM node:20-bookworm-slim
LABEL org.opencontainers.image.title="switchyard-operator" \
      org.opencontainers.image.description="Switchyard operator: ExpertPool and RoutingPolicy controllers" \
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
COPY --from=build /src/operator/package.json operator/
COPY --from=build /src/operator/dist/ operator/dist/
# Same uid/gid as the chart's podSecurityContext; the root filesystem is read-only at run time.
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["node", "operator/dist/main.js"]
