package keystore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// The registry is global, not per workspace; its audit events are filed
// under this pseudo-workspace, which no workspace id can equal.
const registryAudit = "_registry"

func (s *Server) createProvider(ctx context.Context, p *principal, in *keystorev1.Provider) (*keystorev1.Provider, error) {
	if err := p.requireRoot(); err != nil {
		return nil, err
	}
	if err := validProvider(in); err != nil {
		return nil, err
	}
	pr := proto.Clone(in).(*keystorev1.Provider)
	pr.CreateTime = timestamppb.New(s.clock.Now())
	val, err := marshal(pr)
	if err != nil {
		return nil, err
	}
	audit, err := s.auditOps(p, registryAudit, "", "provider.create", nil, pr)
	if err != nil {
		return nil, err
	}
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(providerKey(pr.Id)), "=", 0),
	).Then(append([]clientv3.Op{clientv3.OpPut(providerKey(pr.Id), val)}, audit...)...).Commit()
	if err != nil {
		return nil, fmt.Errorf("create provider: %w", err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("provider %q: %w", pr.Id, ErrAlreadyExists)
	}
	s.changes.Add(ctx, 1)
	return pr, nil
}

func (s *Server) getProvider(ctx context.Context, id string) (*keystorev1.Provider, int64, error) {
	resp, err := s.etcd.Get(ctx, providerKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("get provider: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("provider %q: %w", id, ErrNotFound)
	}
	pr := &keystorev1.Provider{}
	if err := unmarshal(resp.Kvs[0], pr); err != nil {
		return nil, 0, err
	}
	return pr, resp.Kvs[0].ModRevision, nil
}

// updateProvider changes the fields named in the mask; the credential is
// one reference, so setting one of api_key_env and api_key_file clears the
// other unless both are named.
func (s *Server) updateProvider(ctx context.Context, p *principal, req *keystorev1.UpdateProviderRequest) (*keystorev1.Provider, error) {
	if err := p.requireRoot(); err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, invalid("update_mask", "name at least one field: base_url, api_key_env, api_key_file, kind")
	}
	old, rev, err := s.getProvider(ctx, req.GetProvider())
	if err != nil {
		return nil, err
	}
	next := proto.CloneOf(old)
	patch := req.GetPatch()
	for _, f := range paths {
		switch f {
		case "base_url":
			next.BaseUrl = patch.GetBaseUrl()
		case "api_key_env":
			next.ApiKeyEnv, next.ApiKeyFile = patch.GetApiKeyEnv(), ""
		case "api_key_file":
			next.ApiKeyFile, next.ApiKeyEnv = patch.GetApiKeyFile(), ""
		case "kind":
			next.Kind = patch.GetKind()
		default:
			return nil, invalid("update_mask", "cannot update %q", f)
		}
	}
	if slices.Contains(paths, "api_key_env") && slices.Contains(paths, "api_key_file") {
		next.ApiKeyEnv, next.ApiKeyFile = patch.GetApiKeyEnv(), patch.GetApiKeyFile()
	}
	if err := validProvider(next); err != nil {
		return nil, err
	}
	next.UpdateTime = timestamppb.New(s.clock.Now())
	val, err := marshal(next)
	if err != nil {
		return nil, err
	}
	audit, err := s.auditOps(p, registryAudit, "", "provider.update", old, next)
	if err != nil {
		return nil, err
	}
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(providerKey(next.Id)), "=", rev),
	).Then(append([]clientv3.Op{clientv3.OpPut(providerKey(next.Id), val)}, audit...)...).Commit()
	if err != nil {
		return nil, fmt.Errorf("update provider: %w", err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("provider %q: %w", next.Id, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return next, nil
}

func (s *Server) listProviders(ctx context.Context) ([]*keystorev1.Provider, error) {
	resp, err := s.etcd.Get(ctx, providersDir, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list providers: %w", err)
	}
	out := make([]*keystorev1.Provider, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		pr := &keystorev1.Provider{}
		if err := unmarshal(kv, pr); err != nil {
			return nil, err
		}
		out = append(out, pr)
	}
	return out, nil
}

func (s *Server) deleteProvider(ctx context.Context, p *principal, id string) error {
	if err := p.requireRoot(); err != nil {
		return err
	}
	models, err := s.listModels(ctx)
	if err != nil {
		return err
	}
	for _, m := range models {
		if m.GetProvider() == id {
			return fmt.Errorf("%w: provider %q still serves model %q; delete its models first", ErrPrecondition, id, m.GetId())
		}
	}
	resp, err := s.etcd.Get(ctx, providerKey(id))
	if err != nil {
		return fmt.Errorf("delete provider: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("provider %q: %w", id, ErrNotFound)
	}
	old := &keystorev1.Provider{}
	if err := unmarshal(resp.Kvs[0], old); err != nil {
		return err
	}
	audit, err := s.auditOps(p, registryAudit, "", "provider.delete", old, nil)
	if err != nil {
		return err
	}
	// No model may have been added for it in the meantime.
	tx, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(providerKey(id)), "=", resp.Kvs[0].ModRevision),
		clientv3.Compare(clientv3.ModRevision(modelsDir).WithPrefix(), "<", resp.Header.Revision+1),
	).Then(append([]clientv3.Op{clientv3.OpDelete(providerKey(id))}, audit...)...).Commit()
	if err != nil {
		return fmt.Errorf("delete provider: %w", err)
	}
	if !tx.Succeeded {
		return fmt.Errorf("provider %q: %w", id, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return nil
}

func (s *Server) createModel(ctx context.Context, p *principal, in *keystorev1.Model) (*keystorev1.Model, error) {
	if err := p.requireRoot(); err != nil {
		return nil, err
	}
	if err := validModel(in); err != nil {
		return nil, err
	}
	m := proto.Clone(in).(*keystorev1.Model)
	if m.UpstreamModel == "" {
		m.UpstreamModel = m.Id
	}
	now := timestamppb.New(s.clock.Now())
	m.CreateTime, m.UpdateTime = now, now
	val, err := marshal(m)
	if err != nil {
		return nil, err
	}
	audit, err := s.auditOps(p, registryAudit, "", "model.create", nil, m)
	if err != nil {
		return nil, err
	}
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(modelKey(m.Id)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(providerKey(m.Provider)), ">", 0),
	).Then(append([]clientv3.Op{clientv3.OpPut(modelKey(m.Id), val)}, audit...)...).Else(
		clientv3.OpGet(providerKey(m.Provider), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("create model: %w", err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return nil, invalid("model.provider", "unknown provider %q (see ListProviders)", m.Provider)
		}
		return nil, fmt.Errorf("model %q: %w", m.Id, ErrAlreadyExists)
	}
	s.changes.Add(ctx, 1)
	return m, nil
}

func (s *Server) getModel(ctx context.Context, id string) (*keystorev1.Model, int64, error) {
	resp, err := s.etcd.Get(ctx, modelKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("get model: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("model %q: %w", id, ErrNotFound)
	}
	m := &keystorev1.Model{}
	if err := unmarshal(resp.Kvs[0], m); err != nil {
		return nil, 0, err
	}
	return m, resp.Kvs[0].ModRevision, nil
}

func (s *Server) listModels(ctx context.Context) ([]*keystorev1.Model, error) {
	resp, err := s.etcd.Get(ctx, modelsDir, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	out := make([]*keystorev1.Model, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m := &keystorev1.Model{}
		if err := unmarshal(kv, m); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// modelIDs is the set of registered model ids.
func (s *Server) modelIDs(ctx context.Context) (map[string]bool, error) {
	resp, err := s.etcd.Get(ctx, modelsDir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	ids := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		ids[strings.TrimPrefix(string(kv.Key), modelsDir)] = true
	}
	return ids, nil
}

func (s *Server) updateModel(ctx context.Context, p *principal, req *keystorev1.UpdateModelRequest) (*keystorev1.Model, error) {
	if err := p.requireRoot(); err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, invalid("update_mask", "name at least one field: provider, upstream_model, input_price_per_million_usd, output_price_per_million_usd, cache_write_price_per_million_usd, cache_read_price_per_million_usd")
	}
	old, rev, err := s.getModel(ctx, req.GetModel())
	if err != nil {
		return nil, err
	}
	next := proto.Clone(old).(*keystorev1.Model)
	patch := req.GetPatch()
	for _, f := range paths {
		switch f {
		case "provider":
			next.Provider = patch.GetProvider()
		case "upstream_model":
			next.UpstreamModel = patch.GetUpstreamModel()
			if next.UpstreamModel == "" {
				next.UpstreamModel = next.Id
			}
		case "input_price_per_million_usd":
			next.InputPricePerMillionUsd = patch.GetInputPricePerMillionUsd()
		case "output_price_per_million_usd":
			next.OutputPricePerMillionUsd = patch.GetOutputPricePerMillionUsd()
		case "cache_write_price_per_million_usd":
			next.CacheWritePricePerMillionUsd = patch.GetCacheWritePricePerMillionUsd()
		case "cache_read_price_per_million_usd":
			next.CacheReadPricePerMillionUsd = patch.GetCacheReadPricePerMillionUsd()
		default:
			return nil, invalid("update_mask", "cannot update %q", f)
		}
	}
	if err := validModel(next); err != nil {
		return nil, err
	}
	next.UpdateTime = timestamppb.New(s.clock.Now())
	val, err := marshal(next)
	if err != nil {
		return nil, err
	}
	audit, err := s.auditOps(p, registryAudit, "", "model.update", old, next)
	if err != nil {
		return nil, err
	}
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(modelKey(next.Id)), "=", rev),
		clientv3.Compare(clientv3.CreateRevision(providerKey(next.Provider)), ">", 0),
	).Then(append([]clientv3.Op{clientv3.OpPut(modelKey(next.Id), val)}, audit...)...).Else(
		clientv3.OpGet(providerKey(next.Provider), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("update model: %w", err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return nil, invalid("patch.provider", "unknown provider %q (see ListProviders)", next.Provider)
		}
		return nil, fmt.Errorf("model %q: %w", next.Id, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return next, nil
}

func (s *Server) deleteModel(ctx context.Context, p *principal, id string) error {
	if err := p.requireRoot(); err != nil {
		return err
	}
	old, rev, err := s.getModel(ctx, id)
	if err != nil {
		return err
	}
	audit, err := s.auditOps(p, registryAudit, "", "model.delete", old, nil)
	if err != nil {
		return err
	}
	resp, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(modelKey(id)), "=", rev),
	).Then(append([]clientv3.Op{clientv3.OpDelete(modelKey(id))}, audit...)...).Commit()
	if err != nil {
		return fmt.Errorf("delete model: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("model %q: %w", id, ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return nil
}
