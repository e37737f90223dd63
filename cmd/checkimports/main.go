// Command checkimports enforces the one-way dependency rule of the
// repository: cmd -> services -> internal/pkg -> gen. A service never
// imports another service, internal and pkg never import services or cmd,
// pkg (the SDK) never imports internal, and gen imports nothing of ours.
// The SDK's own dependencies include no server-side module (etcd server,
// OpenTelemetry SDK, Prometheus). It reads the graph from `go list -deps`.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

const mod = "github.com/keygate/keygate"

func main() {
	violations, err := check()
	if err == nil {
		var sdk []string
		sdk, err = checkSDK()
		violations = append(violations, sdk...)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "checkimports:", err)
		os.Exit(2)
	}
	for _, v := range violations {
		fmt.Fprintln(os.Stderr, v)
	}
	if len(violations) > 0 {
		os.Exit(1)
	}
	fmt.Println("checkimports: ok")
}

// layer names the part of the repository a package belongs to.
func layer(pkg string) (kind, name string) {
	rest, ok := strings.CutPrefix(pkg, mod+"/")
	if !ok {
		return "external", ""
	}
	parts := strings.SplitN(rest, "/", 3)
	switch parts[0] {
	case "gen", "pkg", "cmd", "internal":
		return parts[0], ""
	case "services":
		if len(parts) > 1 {
			return "services", parts[1]
		}
	}
	return "other", rest
}

// allowed reports whether a package of layer from may depend on to.
func allowed(fromKind, fromName, toKind, toName string) bool {
	if toKind == "external" {
		return true
	}
	switch fromKind {
	case "gen":
		return toKind == "gen"
	case "pkg", "internal":
		// pkg is the Go SDK: it never needs the server-side helpers.
		return toKind == "pkg" || toKind == "gen" || (fromKind == "internal" && toKind == "internal")
	case "services":
		return toKind == "internal" || toKind == "pkg" || toKind == "gen" || (toKind == "services" && toName == fromName)
	case "cmd":
		return toKind != "other"
	}
	return false
}

func check() ([]string, error) {
	var out []string
	for _, pattern := range []string{mod + "/...", mod + "/pkg/...", mod + "/gen/..."} {
		cmd := exec.Command("go", "list", "-deps", "-test", "-f", `{{.ImportPath}}|{{join .Imports " "}}`, pattern)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go list %s: %w: %s", pattern, err, stderr.String())
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			from, imports, _ := strings.Cut(sc.Text(), "|")
			from = normalize(from)
			fk, fn := layer(from)
			if fk == "external" {
				continue
			}
			for _, to := range strings.Fields(imports) {
				tk, tn := layer(normalize(to))
				if !allowed(fk, fn, tk, tn) {
					out = append(out, fmt.Sprintf("%s imports %s: dependencies point cmd -> services -> internal/pkg -> gen, the SDK (pkg) never imports internal, and a service never imports another", from, to))
				}
			}
		}
	}
	return dedupe(out), nil
}

// serverOnly are the dependencies an outside program importing the Go
// SDK (pkg/) must never pull in: they belong to keygate's servers.
var serverOnly = []string{"go.etcd.io/etcd/server/", "go.opentelemetry.io/otel/sdk", "github.com/prometheus/", "go.opentelemetry.io/otel/exporters/"}

// checkSDK lists every package the SDK's packages (tests excluded) depend
// on, and reports the server-side ones.
func checkSDK() ([]string, error) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+"/pkg/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list the SDK: %w: %s", err, stderr.String())
	}
	var out []string
	for _, dep := range strings.Fields(string(b)) {
		for _, p := range serverOnly {
			if strings.HasPrefix(dep, p) {
				out = append(out, fmt.Sprintf("the Go SDK (pkg/) depends on %s: server-side dependencies belong under internal/", dep))
			}
		}
	}
	return out, nil
}

// normalize maps test variants ("p [p.test]", "p_test", "p.test") to p.
func normalize(p string) string {
	p, _, _ = strings.Cut(p, " ")
	p = strings.TrimSuffix(p, ".test")
	return strings.TrimSuffix(p, "_test")
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
