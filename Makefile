# Generator versions are pinned; `make tools` installs them with go install.
BUF_VERSION              := v1.75.0
PROTOC_GEN_GO_VERSION    := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPC_GATEWAY_VERSION     := v2.33.0
# go-containerregistry's crane reads the image CI builds, as registries will.
CRANE_VERSION            := v0.22.1

GOBIN  ?= $(shell go env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

MODULES  := . ./gen ./pkg
PKGS     := github.com/keygate/keygate/... github.com/keygate/keygate/gen/... github.com/keygate/keygate/pkg/...
TESTFLAGS ?= -race -count=1 -timeout 20m

.PHONY: all tools generate check-generated console check-console build install image image-oci image-deps manifests run test test-deps test-deps-npm test-deps-postgres test-deps-chromium vet lint check-imports bench bench-limiter bench-edge bench-keystore bench-usage bench-edge-e2e bench-chaos fmt tidy

all: lint check-imports build test

tools:
	go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@$(GRPC_GATEWAY_VERSION)
	go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(GRPC_GATEWAY_VERSION)

# Regenerates gen/ offline from proto/ with the local plugins above.
generate: tools
	rm -rf gen/keygate gen/openapi
	buf lint
	buf generate
	cp gen/openapi/keygate.swagger.json services/gateway/openapi.json

# Fails when the committed generated code differs from a fresh generation.
check-generated: generate
	git diff --exit-code -- gen services/gateway/openapi.json
	test -z "$$(git status --porcelain -- gen services/gateway/openapi.json)"

build:
	go build -o bin/keygate ./cmd/keygate

# The web console: TypeScript in web/console, types generated from the
# gateway's OpenAPI document, type-checked, bundled by esbuild into
# services/gateway/console/dist. The built files are committed and embedded,
# so a plain `go build` needs no node; this target (node 20's npm, pinned
# tools) rebuilds them.
console:
	@command -v npm >/dev/null 2>&1 || { echo "console: npm (node 20) is needed to build the console" >&2; exit 1; }
	npm ci --prefix web/console --no-audit --no-fund
	cd web/console && npx --no-install openapi-typescript ../../services/gateway/openapi.json --output src/api.gen.ts
	cd web/console && npx --no-install tsc --noEmit
	cd web/console && node build.mjs

# Fails when the committed console differs from a fresh build (sources or
# the OpenAPI document changed without `make console`).
check-console: console
	git diff --exit-code -- web/console/src/api.gen.ts services/gateway/console/dist
	test -z "$$(git status --porcelain -- web/console/src services/gateway/console/dist)"

# The container image (multi-stage, static, non-root); needs a Docker engine.
IMAGE ?= keygate:dev
image:
	docker build -t $(IMAGE) .

# The same image without Docker or a registry (cmd/ociimage): an OCI archive
# (bin/keygate-image.tar) of the static binary, Debian's CA bundle and a
# nonroot user on an empty base; checked (digests, user, entrypoint, ports,
# no shell, static binary, the Dockerfile's final stage; crane validates it
# independently), then the binary
# taken out of it runs `keygate up` on free ports until /healthz answers.
CA_CERTS ?= /etc/ssl/certs/ca-certificates.crt
CRANE    := bin/tools/crane-$(CRANE_VERSION)/crane
image-oci: image-deps $(CRANE)
	mkdir -p bin/image
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o bin/image/keygate ./cmd/keygate
	go build -o bin/ociimage ./cmd/ociimage
	bin/ociimage build -binary bin/image/keygate -certs $(CA_CERTS) -tag $(IMAGE) -out bin/keygate-image.tar
	bin/ociimage check -extract bin/image/keygate-from-image bin/keygate-image.tar
	$(CRANE) validate --tarball bin/keygate-image.tar
	bin/ociimage dockerfile Dockerfile
	bin/ociimage smoke bin/image/keygate-from-image
	@echo "image-oci: bin/keygate-image.tar ($(IMAGE)) OK"

$(CRANE):
	GOWORK=off GOFLAGS=-mod=mod GOBIN=$(CURDIR)/$(dir $(CRANE)) go install github.com/google/go-containerregistry/cmd/crane@$(CRANE_VERSION)

# Debian's ca-certificates package provides the image's CA bundle; installed
# here if missing when we are root with apt-get.
image-deps:
	@if [ -f $(CA_CERTS) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's CA bundle (apt-get install -y ca-certificates)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends ca-certificates || \
			{ apt-get update && apt-get install -y --no-install-recommends ca-certificates; } || exit 1; \
		test -f $(CA_CERTS) || { echo "image-deps: ca-certificates installed but no $(CA_CERTS)" >&2; exit 1; }; \
	else \
		echo "image-deps: $(CA_CERTS) is missing; install it as root: apt-get install -y ca-certificates" >&2; \
		exit 1; \
	fi

# Renders every kustomize overlay and validates it offline.
manifests:
	.ci/validate-manifests.sh

run: build
	./bin/keygate up

# Puts the keygate command in $(go env GOPATH)/bin.
install:
	go install ./cmd/keygate

# The whole workspace: all three modules, with the race detector.
test: test-deps
	go test $(TESTFLAGS) $(PKGS)

# The request log's PostgreSQL tests run a throwaway server: they need the
# server binaries (initdb, postgres) of the Debian package, installed here
# if missing when we are root with apt-get.
test-deps: test-deps-npm test-deps-postgres test-deps-chromium

# The official npm clients the edge is tested with (node 20), each pinned
# by its lock file: openai, @anthropic-ai/sdk, the Vercel AI SDK; and
# playwright-core and axe-core, which drive and check the console in Chromium.
NPM_CLIENTS := tests/openai tests/anthropic tests/aisdk tests/console

test-deps-npm:
	@command -v npm >/dev/null 2>&1 || { echo "test-deps: npm (node 20) is needed for the edge's client tests" >&2; exit 1; }
	for d in $(NPM_CLIENTS); do npm ci --prefix $$d --no-audit --no-fund || exit 1; done

# The console's browser tests run Debian's Chromium (playwright-core
# downloads no browser), installed here if missing when we are root.
test-deps-chromium:
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Chromium (apt-get install -y chromium)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends chromium || \
			{ apt-get update && apt-get install -y --no-install-recommends chromium; } || exit 1; \
		command -v chromium >/dev/null 2>&1 || { echo "test-deps: chromium installed but not on PATH" >&2; exit 1; }; \
	else \
		echo "test-deps: Chromium is missing; the console's browser tests need it." >&2; \
		echo "  install it as root: apt-get install -y chromium" >&2; \
		exit 1; \
	fi

test-deps-postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the PostgreSQL server (apt-get install -y postgresql)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends postgresql || \
			{ apt-get update && apt-get install -y --no-install-recommends postgresql; } || exit 1; \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
			{ echo "test-deps: postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2; exit 1; }; \
	else \
		echo "test-deps: the PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) are missing;" >&2; \
		echo "  install them as root: apt-get install -y postgresql" >&2; \
		exit 1; \
	fi

vet:
	go vet $(PKGS)

lint: vet
	buf lint

# cmd -> services -> pkg -> gen: a service never imports another service,
# pkg never imports services or cmd, gen imports nothing of ours.
check-imports:
	go run ./cmd/checkimports

bench: bench-limiter bench-edge bench-keystore bench-usage

bench-limiter:
	go test -run '^$$' -bench . -benchmem -benchtime 2s ./services/limiter/...

bench-edge:
	go test -run '^$$' -bench . -benchmem ./services/edge/...

bench-keystore:
	go test -run '^$$' -bench . -benchmem ./services/keystore/... github.com/keygate/keygate/pkg/...

bench-usage:
	go test -run '^$$' -bench . -benchmem ./services/usage/...

# keygate end to end against a bare reverse proxy, each in its own process
# (cmd/benche2e); e.g. BENCH_E2E_FLAGS='-duration 5s -conns 1,16 -rounds 1'.
bench-edge-e2e:
	go run ./cmd/benche2e $(BENCH_E2E_FLAGS)

# The multi-process fault tests with CHAOS_SCALE times their trials and
# records, printed as one table (bin/chaos.tsv); about 8 minutes at 5.
CHAOS_SCALE ?= 5
CHAOS_TESTS := TestLimiterKill|TestLimiterRollingRestart|TestEdgeKillDuringUsageOutage|TestKeystoreKill|TestUsageAndEtcdMemberKill|TestEtcdQuorumLoss|TestRevocationReachesEdges
bench-chaos:
	mkdir -p bin && rm -f bin/chaos.tsv
	KEYGATE_CHAOS_SCALE=$(CHAOS_SCALE) KEYGATE_CHAOS_REPORT=$(CURDIR)/bin/chaos.tsv \
		go test -count=1 -timeout 60m -run '^($(CHAOS_TESTS))$$' ./cmd/keygate/
	@printf 'scenario\ttrials\tadmitted\tlost\tdoubled\t503s\trecovery\tnote\n' | cat - bin/chaos.tsv | column -t -s "$$(printf '\t')"

fmt:
	gofmt -w cmd services pkg

tidy:
	for m in $(MODULES); do (cd $$m && go mod tidy); done
	go work sync
