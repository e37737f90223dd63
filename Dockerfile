# syntax=docker/dockerfile:1
#
# keygate: one static binary for every role (`keygate up`, `keygate serve
# <role>`, `keygate etcd`). Build: `make image` (docker build -t keygate:dev .).
#
# CI builds the same image without Docker or a registry: `make image-oci`
# (cmd/ociimage writes an OCI archive), and checks that this file's final
# stage has the same user, entrypoint, command, ports and environment. Both
# lay out the files with `ociimage rootfs`.
#
# Pin the base image by digest in your registry mirror for reproducible
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
# The image's files: the binary, Debian's CA bundle (the golang image is
# Debian with ca-certificates), the nonroot user, /tmp and the data dir.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go run ./cmd/ociimage rootfs -binary /out/keygate \
      -certs /etc/ssl/certs/ca-certificates.crt -out /out/rootfs

# Empty base: no shell, no package manager, no libc.
FROM scratch
COPY --from=build /out/rootfs/ /
# The nonroot user's directories, owned by it. Copying their parents'
# contents makes the directories themselves copies, so --chown reaches them.
COPY --from=build --chown=65532:65532 /out/rootfs/var/lib/ /var/lib/
COPY --from=build --chown=65532:65532 /out/rootfs/home/ /home/
ENV PATH=/ SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt KEYGATE_DATA_DIR=/var/lib/keygate
USER 65532:65532
# 8080 REST gateway, 8081 edge, 9090 gRPC, 9464 metrics, 2379/2380 etcd.
EXPOSE 8080 8081 9090 9464 2379 2380
ENTRYPOINT ["/keygate"]
CMD ["up"]
