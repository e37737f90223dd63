package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// providerKinds are the kinds a provider may be given, by the name users
// write (CLI flags and the config file).
var providerKinds = map[string]keystorev1.ProviderKind{
	"openai":    keystorev1.ProviderKind_PROVIDER_KIND_OPENAI,
	"anthropic": keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC,
}

// parseKind reads a provider kind; empty is openai.
func parseKind(s string) (keystorev1.ProviderKind, error) {
	if s == "" {
		return keystorev1.ProviderKind_PROVIDER_KIND_OPENAI, nil
	}
	k, ok := providerKinds[s]
	if !ok {
		return 0, fmt.Errorf("unknown provider kind %q: want openai or anthropic", s)
	}
	return k, nil
}

// kindName is the name users write for k.
func kindName(k keystorev1.ProviderKind) string {
	if k == keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC {
		return "anthropic"
	}
	return "openai"
}

// updateMask is the update mask of the fields whose flags (keys of
// fields) were given on the command line; at least one must be.
func updateMask(fs *pflag.FlagSet, fields map[string]string) (*fieldmaskpb.FieldMask, error) {
	m := &fieldmaskpb.FieldMask{}
	fs.Visit(func(f *pflag.Flag) {
		if field, ok := fields[f.Name]; ok {
			m.Paths = append(m.Paths, field)
		}
	})
	if len(m.Paths) == 0 {
		names := slices.Sorted(maps.Keys(fields))
		return nil, errors.New("update: give at least one of --" + strings.Join(names, ", --"))
	}
	return m, nil
}
