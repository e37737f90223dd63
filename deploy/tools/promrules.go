//go:build ignore

// Command promrules checks PrometheusRule manifests the way promtool checks
// rules files: it parses every group, rule and PromQL expression and
// validates the templates. promtool itself cannot be `go install`ed (the
// prometheus module has exclude directives), so .ci/validate-manifests.sh
// builds this file in a throw-away module against a pinned prometheus
// version.
//
// Usage: promrules FILE...   (each a PrometheusRule, monitoring.coreos.com/v1)
package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		n, errs := check(path)
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
		if len(errs) == 0 {
			fmt.Printf("%s: %d rules OK\n", path, n)
		}
	}
	if failed || len(os.Args) < 2 {
		os.Exit(1)
	}
}

func check(path string) (int, []error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, []error{err}
	}
	var obj struct {
		APIVersion string    `yaml:"apiVersion"`
		Kind       string    `yaml:"kind"`
		Spec       yaml.Node `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &obj); err != nil {
		return 0, []error{err}
	}
	if obj.APIVersion != "monitoring.coreos.com/v1" || obj.Kind != "PrometheusRule" {
		return 0, []error{fmt.Errorf("want a monitoring.coreos.com/v1 PrometheusRule, got %s %s", obj.APIVersion, obj.Kind)}
	}
	var spec bytes.Buffer
	enc := yaml.NewEncoder(&spec)
	if err := enc.Encode(&obj.Spec); err != nil {
		return 0, []error{err}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	groups, errs := rulefmt.Parse(spec.Bytes(), false, model.UTF8Validation, parser.NewParser(parser.Options{}), logger)
	if len(errs) > 0 {
		return 0, errs
	}
	n := 0
	for _, g := range groups.Groups {
		n += len(g.Rules)
	}
	return n, nil
}
