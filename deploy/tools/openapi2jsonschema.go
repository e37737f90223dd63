//go:build ignore

// Command openapi2jsonschema turns the Kubernetes OpenAPI v2 document
// (api/openapi-spec/swagger.json of the k8s.io/kubernetes module, fetched
// through the Go module proxy) into strict, self-contained JSON schemas that
// kubeconform reads from disk, one file per kind, named the way kubeconform's
// {{ .ResourceKind }}{{ .KindSuffix }}.json template expects
// (deployment-apps-v1.json, service-v1.json, ...).
//
// It exists because the usual pre-built schema repositories are not reachable
// from CI; it mirrors what kubeconform's openapi2jsonschema.py does with
// --strict.
//
// With -check-json it instead checks that each named file is valid JSON (the
// Grafana dashboard), so CI needs nothing but Go.
//
// Usage:
//
//	go run deploy/tools/openapi2jsonschema.go -in swagger.json -out DIR
//	go run deploy/tools/openapi2jsonschema.go -check-json FILE...
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

const refPrefix = "#/definitions/"

func main() {
	in := flag.String("in", "", "Kubernetes OpenAPI v2 document (swagger.json)")
	out := flag.String("out", "", "directory to write the schemas to")
	checkJSON := flag.Bool("check-json", false, "only check that the file arguments are valid JSON")
	flag.Parse()

	var err error
	switch {
	case *checkJSON:
		err = checkFiles(flag.Args())
	case *in != "" && *out != "":
		err = convert(*in, *out)
	default:
		err = errors.New("need -in and -out, or -check-json FILE...")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "openapi2jsonschema:", err)
		os.Exit(1)
	}
}

func checkFiles(paths []string) error {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

type gvk struct {
	Group, Version, Kind string
}

func convert(in, out string) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if len(doc.Definitions) == 0 {
		return fmt.Errorf("%s: no definitions", in)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}

	defs := make(map[string]any, len(doc.Definitions))
	for name, d := range doc.Definitions {
		defs[name] = rewrite(name, d)
	}

	names := make([]string, 0, len(doc.Definitions))
	for name := range doc.Definitions {
		names = append(names, name)
	}
	sort.Strings(names)

	written := 0
	for _, name := range names {
		for _, k := range kinds(doc.Definitions[name]) {
			schema := map[string]any{
				"$schema":     "http://json-schema.org/draft-04/schema#",
				"$ref":        refPrefix + name,
				"definitions": reachable(name, defs),
			}
			data, err := json.Marshal(schema)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := os.WriteFile(filepath.Join(out, fileName(k)), data, 0o644); err != nil {
				return err
			}
			written++
		}
	}
	if written == 0 {
		return fmt.Errorf("%s: no definition carries x-kubernetes-group-version-kind", in)
	}
	fmt.Printf("wrote %d schemas to %s\n", written, out)
	return nil
}

// fileName follows kubeconform's KindSuffix: the first label of the group
// (none for the core group) and the version.
func fileName(k gvk) string {
	suffix := "-" + strings.ToLower(k.Version)
	if k.Group != "" {
		suffix = "-" + strings.ToLower(strings.Split(k.Group, ".")[0]) + suffix
	}
	return strings.ToLower(k.Kind) + suffix + ".json"
}

func kinds(def map[string]any) []gvk {
	list, _ := def["x-kubernetes-group-version-kind"].([]any)
	var ks []gvk
	for _, e := range list {
		m, _ := e.(map[string]any)
		g, _ := m["group"].(string)
		v, _ := m["version"].(string)
		k, _ := m["kind"].(string)
		if v != "" && k != "" {
			ks = append(ks, gvk{g, v, k})
		}
	}
	return ks
}

// rewrite returns a copy of a definition with the Kubernetes quirks turned
// into plain JSON schema: int-or-string and quantities accept both types
// (YAML "port: 8080" and "cpu: 1" are valid), and every object with declared
// properties rejects unknown ones (strict), as the API server does.
func rewrite(name string, def map[string]any) any {
	switch name {
	case "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
		"io.k8s.apimachinery.pkg.api.resource.Quantity":
		return intOrString()
	}
	return walk(def)
}

func intOrString() map[string]any {
	return map[string]any{"oneOf": []any{
		map[string]any{"type": "string"},
		map[string]any{"type": "integer"},
	}}
}

func walk(v any) any {
	switch t := v.(type) {
	case map[string]any:
		if t["format"] == "int-or-string" || t["x-kubernetes-int-or-string"] == true {
			return intOrString()
		}
		n := make(map[string]any, len(t))
		for k, e := range t {
			if strings.HasPrefix(k, "x-kubernetes-") && k != "x-kubernetes-preserve-unknown-fields" {
				continue
			}
			if k == "properties" {
				// Property names are data, not keywords: rewrite each value only.
				props, _ := e.(map[string]any)
				np := make(map[string]any, len(props))
				for pk, pv := range props {
					np[pk] = walk(pv)
				}
				n[k] = np
				continue
			}
			n[k] = walk(e)
		}
		_, hasProps := n["properties"]
		_, hasAdditional := n["additionalProperties"]
		if hasProps && !hasAdditional && n["x-kubernetes-preserve-unknown-fields"] != true {
			n["additionalProperties"] = false
		}
		delete(n, "x-kubernetes-preserve-unknown-fields")
		return n
	case []any:
		n := make([]any, len(t))
		for i, e := range t {
			n[i] = walk(e)
		}
		return n
	default:
		return v
	}
}

// reachable returns the definitions that root refers to, transitively, so
// that each file stands alone (recursive types such as JSONSchemaProps stay
// as references instead of being expanded forever).
func reachable(root string, defs map[string]any) map[string]any {
	seen := map[string]any{}
	var visit func(string)
	visit = func(name string) {
		if _, ok := seen[name]; ok {
			return
		}
		d, ok := defs[name]
		if !ok {
			return
		}
		seen[name] = d
		for _, r := range refs(d, nil) {
			visit(r)
		}
	}
	visit(root)
	return seen
}

func refs(v any, acc []string) []string {
	switch t := v.(type) {
	case map[string]any:
		if r, ok := t["$ref"].(string); ok && strings.HasPrefix(r, refPrefix) {
			acc = append(acc, strings.TrimPrefix(r, refPrefix))
		}
		for _, e := range t {
			acc = refs(e, acc)
		}
	case []any:
		for _, e := range t {
			acc = refs(e, acc)
		}
	}
	return acc
}
