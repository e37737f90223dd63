package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"go.yaml.in/yaml/v3"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/money"
)

// declaration is a config file (--config, KEYGATE_CONFIG): the providers,
// models and workspaces keygate should have. Applying it is idempotent;
// with prune, providers and models it does not declare are deleted.
//
//	providers:
//	  - id: openai
//	    kind: openai              # or anthropic
//	    base_url: https://api.openai.com/v1
//	    api_key_env: OPENAI_API_KEY   # or api_key_file: /run/secrets/openai
//	models:
//	  - id: gpt-4o-mini
//	    provider: openai
//	    input_price: "0.15"       # USD per million tokens
//	    output_price: "0.60"
//	workspaces:
//	  - id: acme
//	    name: Acme
//	    max_keys: 50
//	prune: false
type declaration struct {
	path       string
	providers  []declared[*keystorev1.Provider]
	models     []declared[*keystorev1.Model]
	workspaces []declared[*keystorev1.Workspace]
	prune      bool
}

// declared is one object of the file and where it is, for errors.
type declared[T any] struct {
	at string // "file:line: models[2] (gpt-4o)"
	v  T
}

// loadDeclaration reads and validates a config file. Every error names
// the file, the line and the field.
func loadDeclaration(path string) (*declaration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseDeclaration(path, b)
}

func parseDeclaration(path string, b []byte) (*declaration, error) {
	d := &declaration{path: path}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err) // yaml names the line
	}
	if len(doc.Content) == 0 {
		return d, nil
	}
	err := d.fields(doc.Content[0], "", map[string]func(*yaml.Node) error{
		"providers":  func(n *yaml.Node) error { return d.each(n, "providers", d.provider) },
		"models":     func(n *yaml.Node) error { return d.each(n, "models", d.model) },
		"workspaces": func(n *yaml.Node) error { return d.each(n, "workspaces", d.workspace) },
		"prune":      func(n *yaml.Node) error { return n.Decode(&d.prune) },
	})
	if err != nil {
		return nil, err
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	return d, nil
}

// errAt is an error at node n of the file, in field.
func (d *declaration) errAt(n *yaml.Node, field, msg string) error {
	return located{fmt.Errorf("%s:%d: %s: %s", d.path, n.Line, field, msg)}
}

// located is an error that names its place in the file.
type located struct{ error }

// fields decodes mapping n: each key through its setter, unknown keys are
// errors. prefix names the mapping in errors.
func (d *declaration) fields(n *yaml.Node, prefix string, set map[string]func(*yaml.Node) error) error {
	if n.Kind != yaml.MappingNode {
		return d.errAt(n, prefix+"(top)", "want a mapping of fields")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f, ok := set[k.Value]
		switch {
		case !ok && (k.Value == "api_key" || k.Value == "apiKey"):
			return d.errAt(k, prefix+k.Value, "a credential is never written in the file: name an environment variable (api_key_env) or a file (api_key_file)")
		case !ok:
			return d.errAt(k, prefix+k.Value, "unknown field")
		}
		if err := f(v); err != nil {
			if _, ok := errors.AsType[located](err); ok {
				return err
			}
			return d.errAt(v, prefix+k.Value, err.Error())
		}
	}
	return nil
}

// each decodes sequence n with item, for each of its entries.
func (d *declaration) each(n *yaml.Node, name string, item func(*yaml.Node, string) error) error {
	if n.Kind != yaml.SequenceNode {
		return d.errAt(n, name, "want a list")
	}
	for i, e := range n.Content {
		if err := item(e, name+"["+strconv.Itoa(i)+"]."); err != nil {
			return err
		}
	}
	return nil
}

// str decodes a scalar string into p.
func str(p *string) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		if n.Kind != yaml.ScalarNode {
			return errors.New("want a string")
		}
		*p = n.Value
		return nil
	}
}

func (d *declaration) provider(n *yaml.Node, at string) error {
	p := &keystorev1.Provider{}
	var kind string
	if err := d.fields(n, at, map[string]func(*yaml.Node) error{
		"id": str(&p.Id), "kind": str(&kind), "base_url": str(&p.BaseUrl),
		"api_key_env": str(&p.ApiKeyEnv), "api_key_file": str(&p.ApiKeyFile),
	}); err != nil {
		return err
	}
	k, err := parseKind(kind)
	switch {
	case err != nil:
		return d.errAt(n, at+"kind", err.Error())
	case p.Id == "":
		return d.errAt(n, at+"id", "required")
	case p.BaseUrl == "":
		return d.errAt(n, at+"base_url", `required: the provider's base URL, e.g. https://api.openai.com/v1, or "mock"`)
	case p.ApiKeyEnv != "" && p.ApiKeyFile != "":
		return d.errAt(n, at+"api_key_env", "give api_key_env or api_key_file, not both")
	}
	p.Kind = k
	d.providers = append(d.providers, declared[*keystorev1.Provider]{d.where(n, at, p.Id), p})
	return nil
}

func (d *declaration) model(n *yaml.Node, at string) error {
	m := &keystorev1.Model{}
	if err := d.fields(n, at, map[string]func(*yaml.Node) error{
		"id": str(&m.Id), "provider": str(&m.Provider), "upstream_model": str(&m.UpstreamModel),
		"input_price": str(&m.InputPricePerMillionUsd), "output_price": str(&m.OutputPricePerMillionUsd),
		"cache_write_price": str(&m.CacheWritePricePerMillionUsd), "cache_read_price": str(&m.CacheReadPricePerMillionUsd),
	}); err != nil {
		return err
	}
	switch {
	case m.Id == "":
		return d.errAt(n, at+"id", "required")
	case m.Provider == "":
		return d.errAt(n, at+"provider", "required: the id of a provider")
	}
	if _, err := money.ParsePrices(m.InputPricePerMillionUsd, m.OutputPricePerMillionUsd,
		m.CacheWritePricePerMillionUsd, m.CacheReadPricePerMillionUsd); err != nil {
		return d.errAt(n, at+"prices", err.Error()+` (quote prices: input_price: "0.15")`)
	}
	d.models = append(d.models, declared[*keystorev1.Model]{d.where(n, at, m.Id), m})
	return nil
}

func (d *declaration) workspace(n *yaml.Node, at string) error {
	w := &keystorev1.Workspace{}
	if err := d.fields(n, at, map[string]func(*yaml.Node) error{
		"id": str(&w.Id), "name": str(&w.Name),
		"max_keys": func(v *yaml.Node) error { return v.Decode(&w.MaxKeys) },
	}); err != nil {
		return err
	}
	if w.Id == "" {
		return d.errAt(n, at+"id", "required")
	}
	d.workspaces = append(d.workspaces, declared[*keystorev1.Workspace]{d.where(n, at, w.Id), w})
	return nil
}

// where names an object for errors of applying it.
func (d *declaration) where(n *yaml.Node, at, id string) string {
	return d.path + ":" + strconv.Itoa(n.Line) + ": " + at[:len(at)-1] + " (" + id + ")"
}

// check finds ids declared twice.
func (d *declaration) check() error {
	seen := map[string]string{}
	dup := func(kind, id, at string) error {
		if first, ok := seen[kind+"/"+id]; ok {
			return fmt.Errorf("%s: declared again (first at %s)", at, first)
		}
		seen[kind+"/"+id] = at
		return nil
	}
	var errs []error
	for _, p := range d.providers {
		errs = append(errs, dup("provider", p.v.Id, p.at))
	}
	for _, m := range d.models {
		errs = append(errs, dup("model", m.v.Id, m.at))
	}
	for _, w := range d.workspaces {
		errs = append(errs, dup("workspace", w.v.Id, w.at))
	}
	return errors.Join(errs...)
}
