#!/usr/bin/env bash
# Renders every kustomize overlay under deploy/ and the Helm chart
# deploy/helm/keygate (default, production and external-etcd values) and
# validates every object against the Kubernetes JSON schemas, offline; checks
# that the chart renders the objects kustomize does; checks the Prometheus
# rules (PromQL included) and the Grafana dashboard JSON.
#
# Needs only Go: the tools come through the Go module proxy with `go install`,
# and the Kubernetes schemas are generated from the OpenAPI document that the
# k8s.io/kubernetes module ships (api/openapi-spec/swagger.json), because the
# usual pre-built schema repositories are not reachable from CI. Everything
# is pinned and cached under $KEYGATE_CI_CACHE, so a second run only renders
# and validates (a few seconds); a first run with an empty build cache takes
# about 6 minutes on two busy cores, most of it compiling helm.
#
# Exits non-zero on any invalid object, unknown kind, bad rule or bad JSON.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2    # sigs.k8s.io/kustomize/kustomize/v5
KUBECONFORM_VERSION=v0.8.0  # github.com/yannh/kubeconform
KUBERNETES_VERSION=v1.35.4  # k8s.io/kubernetes: the API the schemas describe
PROMETHEUS_VERSION=v0.316.0 # github.com/prometheus/prometheus: rule and PromQL parser
HELM_VERSION=v3.21.4        # helm.sh/helm/v3: lint and template

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KEYGATE_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate-ci}
bin=$cache/bin
mkdir -p "$bin"

# Tool builds must not see the project's workspace or inherited flags.
export GOWORK=off GOFLAGS=-mod=mod
started=$SECONDS

log() { printf '== %s\n' "$*" >&2; }

# install NAME PACKAGE VERSION: go install once into $bin/NAME-VERSION.
install() {
	local name=$1 pkg=$2 version=$3
	local dst=$bin/$name-$version
	if [[ ! -x $dst ]]; then
		log "installing $pkg@$version"
		local tmp
		tmp=$(mktemp -d)
		(cd "$tmp" && GOBIN=$tmp go install "$pkg@$version")
		mv "$tmp/$name" "$dst"
		rm -rf "$tmp"
	fi
	printf '%s' "$dst"
}

kustomize=$(install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION")
kubeconform=$(install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION")
helm=$(install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION")

# Kubernetes schemas: one strict, self-contained JSON schema per kind.
schemas=$cache/schemas/kubernetes-$KUBERNETES_VERSION
if [[ ! -f $schemas/.complete ]]; then
	log "generating Kubernetes $KUBERNETES_VERSION schemas"
	moddir=$(cd "$cache" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	if [[ -z $moddir || ! -f $moddir/api/openapi-spec/swagger.json ]]; then
		echo "k8s.io/kubernetes@$KUBERNETES_VERSION: no api/openapi-spec/swagger.json" >&2
		exit 1
	fi
	rm -rf "$schemas"
	(cd "$cache" && go run "$root/deploy/tools/openapi2jsonschema.go" \
		-in "$moddir/api/openapi-spec/swagger.json" -out "$schemas")
	touch "$schemas/.complete"
fi

# Rule checker: deploy/tools/promrules.go in a throw-away module pinned to
# one prometheus version (promtool cannot be go-installed).
promdir=$cache/promrules-$PROMETHEUS_VERSION
mkdir -p "$promdir"
sed '/^\/\/go:build ignore$/d' "$root/deploy/tools/promrules.go" >"$promdir/main.go"
if [[ ! -f $promdir/go.sum ]]; then
	log "resolving github.com/prometheus/prometheus@$PROMETHEUS_VERSION"
	printf 'module promrules\n\ngo 1.26\n' >"$promdir/go.mod"
	# go get of the two packages, not go mod tidy: tidy would fetch every
	# module prometheus's tests need (cloud SDKs, client-go...).
	(cd "$promdir" && go get "github.com/prometheus/prometheus/model/rulefmt@$PROMETHEUS_VERSION" \
		"github.com/prometheus/prometheus/promql/parser@$PROMETHEUS_VERSION")
fi
(cd "$promdir" && go build -o promrules .)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

log "rendering"
targets=("$root/deploy/base")
for dir in "$root"/deploy/overlays/*/; do
	targets+=("${dir%/}")
done
for dir in "${targets[@]}"; do
	name=${dir#"$root"/deploy/}
	file=$out/${name//\//_}.yaml
	"$kustomize" build "$dir" >"$file"
	printf '%-28s %3d objects\n' "$name" "$(grep -c '^kind:' "$file")"
	# Secret values never live in the repository: only the dev overlay may
	# generate a (publicly known, throw-away) Secret.
	if [[ $name != overlays/dev ]] && grep -q '^kind: Secret$' "$file"; then
		echo "$name renders a Secret; create production secrets out of band (deploy/README.md)" >&2
		exit 1
	fi
done

# The chart links the rules and the dashboard (files/ -> deploy/prometheus,
# deploy/grafana) rather than copy them; helm says so on every run.
helmq() {
	local err=$out/helm.stderr
	"$helm" "$@" 2>"$err" || { cat "$err" >&2; return 1; }
	grep -v 'found symbolic link in path' "$err" >&2 || true
}
# Keep helm's own state out of $HOME: nothing here uses a repository.
export HELM_CACHE_HOME=$out/helm/cache HELM_CONFIG_HOME=$out/helm/config HELM_DATA_HOME=$out/helm/data

log "linting and rendering the Helm chart"
chart=$root/deploy/helm/keygate
# chart_args NAME: the values of one checked install.
chart_args() {
	case $1 in
	default) ;;
	production) args=(-f "$chart/values-production.yaml") ;;
	external-etcd) args=(-f "$chart/values-production.yaml" --set etcd.bundled=false
		--set "etcd.external.endpoints={https://etcd-0.example.internal:2379}") ;;
	esac
}
for name in default production external-etcd; do
	args=()
	chart_args "$name"
	helmq lint --strict --quiet "$chart" ${args[@]+"${args[@]}"}
	file=$out/helm_$name.yaml
	helmq template keygate "$chart" --namespace keygate \
		--kube-version "${KUBERNETES_VERSION#v}" ${args[@]+"${args[@]}"} >"$file"
	printf '%-28s %3d objects\n' "helm ($name)" "$(grep -c '^kind:' "$file")"
	if [[ $name != default ]] && grep -q '^kind: Secret$' "$file"; then
		echo "helm ($name) renders a Secret; production values name existing Secrets (deploy/README.md)" >&2
		exit 1
	fi
done

# The chart and kustomize describe one install: the same kinds and names,
# apart from the namespace, Secrets (created out of band or by the chart)
# and the providers ConfigMap (set by values in the chart).
objects() {
	awk '/^---/ {kind = ""; meta = 0}
		/^kind:/ {kind = $2}
		/^metadata:/ {meta = 1; next}
		/^[^ #]/ {meta = 0}
		meta && /^  name:/ {print kind "/" $2; meta = 0}' "$1" |
		sed -E 's#^(ConfigMap/.*)-[a-z0-9]{10}$#\1#' |
		grep -Ev '^(Namespace|Secret)/|^ConfigMap/.*-registry$' | sort
}
for pair in base:default overlays_production:production overlays_external-etcd:external-etcd; do
	if ! diff <(objects "$out/${pair%%:*}.yaml") <(objects "$out/helm_${pair#*:}.yaml") >"$out/parity.diff"; then
		echo "kustomize ${pair%%:*} and helm (${pair#*:}) render different objects (< kustomize, > helm):" >&2
		cat "$out/parity.diff" >&2
		exit 1
	fi
done

log "validating against Kubernetes $KUBERNETES_VERSION schemas (strict)"
"$kubeconform" -strict -summary -output text \
	-schema-location "$schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
	-schema-location "$root/deploy/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
	"$out"

log "checking Prometheus rules"
"$promdir/promrules" "$root"/deploy/prometheus/rules*.yaml

log "checking dashboards"
(cd "$cache" && go run "$root/deploy/tools/openapi2jsonschema.go" -check-json "$root"/deploy/grafana/*.json)

log "manifests OK in $((SECONDS - started)) s"
