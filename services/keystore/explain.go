package keystore

import (
	"context"
	"errors"
	"fmt"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitpolicy"
	"github.com/keygate/keygate/pkg/money"
)

// LimitExplainer reads a Check item's live limits from the limiter that
// decides it.
type LimitExplainer interface {
	Explain(ctx context.Context, it *limiterv1.CheckItem) (*limiterv1.ExplainResponse, error)
}

// errNoLimiter means ExplainKey has no limiter to read from.
var errNoLimiter = fmt.Errorf("%w: this keystore has no limiter to explain limits with", ErrPrecondition)

// ExplainKey implements KeystoreService.ExplainKey.
func (s *Server) ExplainKey(ctx context.Context, req *keystorev1.ExplainKeyRequest) (*keystorev1.ExplainKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ExplainKeyResponse, error) {
		return s.explainKey(ctx, p, req)
	})
}

// explainKey builds the Check item the edge would send for the key now
// (limitpolicy, the same builder) and asks the limiter to judge it.
func (s *Server) explainKey(ctx context.Context, p *principal, req *keystorev1.ExplainKeyRequest) (*keystorev1.ExplainKeyResponse, error) {
	if req.GetEstimatedTokens() < 0 {
		return nil, &FieldError{Field: "estimated_tokens", Reason: "must not be negative"}
	}
	sk, err := s.readKey(ctx, p, req.GetWorkspace(), req.GetKey())
	if err != nil {
		return nil, err
	}
	if s.limits == nil {
		return nil, errNoLimiter
	}
	lv, err := s.levels(ctx, sk.key)
	if err != nil {
		return nil, err
	}
	it, err := limitpolicy.Item(lv, req.GetModel(), s.clock.Now())
	if err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	it.EstimatedTokens = max(req.GetEstimatedTokens(), 1)
	cost, err := s.estimateCost(ctx, req.GetModel(), it.EstimatedTokens)
	if err != nil {
		return nil, err
	}
	it.EstimatedCostMicros = cost.Micros()
	resp, err := s.limits.Explain(ctx, it)
	if err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	d := resp.GetDecision()
	return &keystorev1.ExplainKeyResponse{
		Limits: resp.GetLimits(), WouldAdmit: d.GetAllowed(),
		DeniedLevel: d.GetDeniedLevel(), DeniedBy: d.GetDeniedBy(), DeniedModel: d.GetDeniedModel(),
		EstimatedCostUsd: cost.String(), Reported: d.GetReported(),
	}, nil
}

// levels reads the key's workspace and owning member for their limits.
func (s *Server) levels(ctx context.Context, k *keystorev1.Key) (limitpolicy.Levels, error) {
	ws, _, err := s.getWorkspace(ctx, k.GetWorkspace())
	if err != nil {
		return limitpolicy.Levels{}, err
	}
	lv := limitpolicy.Levels{Key: k, Workspace: ws}
	resp, err := s.etcd.Get(ctx, memberKey(k.GetWorkspace(), k.GetOwner()))
	if err != nil {
		return lv, fmt.Errorf("get member: %w", err)
	}
	if len(resp.Kvs) > 0 {
		lv.Member = &keystorev1.Member{}
		if err := unmarshal(resp.Kvs[0], lv.Member); err != nil {
			return lv, err
		}
	}
	return lv, nil
}

// estimateCost prices an estimate at the model's dearest token price, the
// most it could cost; no model, nothing.
func (s *Server) estimateCost(ctx context.Context, model string, tokens int64) (money.Nanos, error) {
	if model == "" {
		return 0, nil
	}
	m, _, err := s.getModel(ctx, model)
	if errors.Is(err, ErrNotFound) {
		return 0, &FieldError{Field: "model", Reason: fmt.Sprintf("unknown model %q", model)}
	}
	if err != nil {
		return 0, err
	}
	in, err := money.Parse(m.GetInputPricePerMillionUsd())
	if err != nil {
		return 0, fmt.Errorf("model %s price: %w", model, err)
	}
	out, err := money.Parse(m.GetOutputPricePerMillionUsd())
	if err != nil {
		return 0, fmt.Errorf("model %s price: %w", model, err)
	}
	return money.Cost(tokens, max(in, out)), nil
}
