# syntax=docker/dockerfile:1
#
# keygate: one static binary for every role (`keygate up`, `keygate serve
# <role>`, `keygate etcd`). Build: `make image` (docker build -t keygate:dev .).
#
# Pin the base images by digest in your registry mirror for reproducible
# builds (FROM golang:1.26@sha256:...).

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Module files first: the dependency layer is rebuilt only when they change.
COPY go.work go.mod go.sum ./
COPY gen/go.mod gen/go.sum gen/
COPY pkg/go.mod pkg/go.sum pkg/
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS=linux TARGETARCH=amd64
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w" -o /out/keygate ./cmd/keygate
# The data directory (embedded etcd in `keygate up`), owned by the nonroot user.
RUN mkdir -p /out/data && chown 65532:65532 /out/data

# Static, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keygate /keygate
COPY --from=build --chown=65532:65532 /out/data /var/lib/keygate
ENV KEYGATE_DATA_DIR=/var/lib/keygate
USER 65532:65532
# 8080 REST gateway, 8081 edge, 9090 gRPC, 9464 metrics, 2379/2380 etcd.
EXPOSE 8080 8081 9090 9464 2379 2380
ENTRYPOINT ["/keygate"]
CMD ["up"]
