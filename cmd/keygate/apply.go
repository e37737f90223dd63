package main

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// builtinProvider is the mock `keygate up` registers; prune keeps it and
// its models.
const builtinProvider = "mock"

// applyTries bounds how often an apply that raced another (several
// processes applying the same file at start) is planned again.
const applyTries = 5

// apply makes the keystore hold what d declares: it creates what is
// missing, updates what differs and, with prune, deletes the providers and
// models d does not declare. It is idempotent. If a step fails, the steps
// already taken are undone in reverse order, so the registry ends as it
// began (workspaces are created last: one cannot be deleted).
func (d *declaration) apply(ctx context.Context, ks keystorev1.KeystoreServiceClient) error {
	var err error
	for range applyTries {
		if err = d.applyOnce(ctx, ks); !raced(err) {
			return err
		}
	}
	return err
}

// raced says whether err came from another writer changing the registry
// between this apply's reads and writes.
func raced(err error) bool {
	c := status.Code(err)
	return c == codes.AlreadyExists || c == codes.Aborted
}

// step is one change and its undo.
type step struct {
	at   string
	do   func(context.Context) error
	undo func(context.Context) error
}

func (d *declaration) applyOnce(ctx context.Context, ks keystorev1.KeystoreServiceClient) error {
	steps, err := d.plan(ctx, ks)
	if err != nil {
		return err
	}
	for i, s := range steps {
		if err := s.do(ctx); err != nil {
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					_ = steps[j].undo(context.WithoutCancel(ctx))
				}
			}
			return fmt.Errorf("%s: %w", s.at, err)
		}
	}
	return nil
}

// plan lists the steps, in an order the keystore accepts: providers before
// their models, models deleted before their providers, workspaces last.
func (d *declaration) plan(ctx context.Context, ks keystorev1.KeystoreServiceClient) ([]step, error) {
	pr, err := ks.ListProviders(ctx, &keystorev1.ListProvidersRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("config %s: list providers: %w", d.path, err)
	}
	mr, err := ks.ListModels(ctx, &keystorev1.ListModelsRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("config %s: list models: %w", d.path, err)
	}
	var steps []step
	providers := byID(pr.GetProviders(), (*keystorev1.Provider).GetId)
	for _, p := range d.providers {
		steps = append(steps, providerStep(ks, p, providers[p.v.Id])...)
	}
	models := byID(mr.GetModels(), (*keystorev1.Model).GetId)
	for _, m := range d.models {
		steps = append(steps, modelStep(ks, m, models[m.v.Id])...)
	}
	if d.prune {
		steps = append(steps, d.pruneSteps(ks, pr.GetProviders(), mr.GetModels())...)
	}
	for _, w := range d.workspaces {
		s, err := workspaceStep(ctx, ks, w)
		if err != nil {
			return nil, err
		}
		steps = append(steps, s...)
	}
	return steps, nil
}

func byID[T any](xs []T, id func(T) string) map[string]T {
	m := make(map[string]T, len(xs))
	for _, x := range xs {
		m[id(x)] = x
	}
	return m
}

// changed is the mask of fields that differ between have and want.
func changed(have, want proto.Message, fields ...string) *fieldmaskpb.FieldMask {
	m := &fieldmaskpb.FieldMask{}
	hr, wr := have.ProtoReflect(), want.ProtoReflect()
	for _, f := range fields {
		fd := hr.Descriptor().Fields().ByName(protoreflect.Name(f))
		if !hr.Get(fd).Equal(wr.Get(fd)) {
			m.Paths = append(m.Paths, f)
		}
	}
	return m
}

func providerStep(ks keystorev1.KeystoreServiceClient, p declared[*keystorev1.Provider], have *keystorev1.Provider) []step {
	want := p.v
	if have == nil {
		return []step{{at: p.at,
			do: func(ctx context.Context) error {
				_, err := ks.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: want})
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := ks.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: want.Id})
				return err
			}}}
	}
	if have.GetKind() == keystorev1.ProviderKind_PROVIDER_KIND_UNSPECIFIED {
		have = proto.CloneOf(have)
		have.Kind = keystorev1.ProviderKind_PROVIDER_KIND_OPENAI
	}
	m := changed(have, want, "base_url", "kind", "api_key_env", "api_key_file")
	if len(m.Paths) == 0 {
		return nil
	}
	// The credential is one reference: name both so that the keystore
	// sets exactly the declared one.
	if slices.Contains(m.Paths, "api_key_env") || slices.Contains(m.Paths, "api_key_file") {
		m.Paths = append(slices.DeleteFunc(m.Paths, func(f string) bool { return f == "api_key_env" || f == "api_key_file" }), "api_key_env", "api_key_file")
	}
	return []step{{at: p.at,
		do: func(ctx context.Context) error {
			_, err := ks.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: want.Id, Patch: want, UpdateMask: m})
			return err
		},
		undo: func(ctx context.Context) error {
			_, err := ks.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: want.Id, Patch: have, UpdateMask: m})
			return err
		}}}
}

var modelFieldNames = []string{"provider", "upstream_model", "input_price_per_million_usd", "output_price_per_million_usd",
	"cache_write_price_per_million_usd", "cache_read_price_per_million_usd"}

func modelStep(ks keystorev1.KeystoreServiceClient, md declared[*keystorev1.Model], have *keystorev1.Model) []step {
	want := md.v
	if have == nil {
		return []step{{at: md.at,
			do: func(ctx context.Context) error {
				_, err := ks.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: want})
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := ks.DeleteModel(ctx, &keystorev1.DeleteModelRequest{Model: want.Id})
				return err
			}}}
	}
	if want.UpstreamModel == "" {
		// The keystore stores the id as the default upstream name.
		want = proto.CloneOf(want)
		want.UpstreamModel = want.Id
	}
	m := changed(have, want, modelFieldNames...)
	if len(m.Paths) == 0 {
		return nil
	}
	return []step{{at: md.at,
		do: func(ctx context.Context) error {
			_, err := ks.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: want.Id, Patch: want, UpdateMask: m})
			return err
		},
		undo: func(ctx context.Context) error {
			_, err := ks.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: want.Id, Patch: have, UpdateMask: m})
			return err
		}}}
}

// pruneSteps delete the models, then the providers, that d does not
// declare, except the built-in mock.
func (d *declaration) pruneSteps(ks keystorev1.KeystoreServiceClient, providers []*keystorev1.Provider, models []*keystorev1.Model) []step {
	keepP := map[string]bool{builtinProvider: true}
	for _, p := range d.providers {
		keepP[p.v.Id] = true
	}
	keepM := map[string]bool{}
	for _, m := range d.models {
		keepM[m.v.Id] = true
	}
	var steps []step
	for _, m := range models {
		if keepM[m.GetId()] || m.GetProvider() == builtinProvider {
			continue
		}
		steps = append(steps, step{at: d.path + ": prune model " + m.GetId(),
			do: func(ctx context.Context) error {
				_, err := ks.DeleteModel(ctx, &keystorev1.DeleteModelRequest{Model: m.GetId()})
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := ks.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: m})
				return err
			}})
	}
	for _, p := range providers {
		if keepP[p.GetId()] {
			continue
		}
		steps = append(steps, step{at: d.path + ": prune provider " + p.GetId(),
			do: func(ctx context.Context) error {
				_, err := ks.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: p.GetId()})
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := ks.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: p})
				return err
			}})
	}
	return steps
}

// workspaceStep creates a missing workspace or updates its name and key
// limit; neither is undone.
func workspaceStep(ctx context.Context, ks keystorev1.KeystoreServiceClient, w declared[*keystorev1.Workspace]) ([]step, error) {
	want := w.v
	r, err := ks.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: want.Id})
	switch {
	case status.Code(err) == codes.NotFound:
		return []step{{at: w.at, do: func(ctx context.Context) error {
			_, err := ks.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: want})
			return err
		}}}, nil
	case err != nil:
		return nil, fmt.Errorf("%s: %w", w.at, err)
	}
	have := r.GetWorkspace()
	fields := []string{"name"}
	if want.MaxKeys != 0 {
		fields = append(fields, "max_keys")
	}
	m := changed(have, want, fields...)
	if len(m.Paths) == 0 {
		return nil, nil
	}
	return []step{{at: w.at, do: func(ctx context.Context) error {
		_, err := ks.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: want.Id, Patch: want, UpdateMask: m})
		return err
	}}}, nil
}
