// Package limitpolicy builds what the limiter decides a key's requests
// against: the limits of every level (key, owning member, workspace) in
// force at a moment, timed overrides applied, with the workspace's credits
// and alert thresholds. The edge builds its Check items with it and the
// keystore its explanations, so both judge the same limits.
package limitpolicy

import (
	"fmt"
	"time"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/money"
)

// Levels is a key with the workspace and member it belongs to; Workspace
// and Member may be nil (no limits at that level).
type Levels struct {
	Key       *keystorev1.Key
	Workspace *keystorev1.Workspace
	Member    *keystorev1.Member
}

// KeyPolicy is the key's own enforced limits.
func KeyPolicy(k *keystorev1.Key) *typev1.Policy {
	return &typev1.Policy{
		GlobalLimits: k.GetGlobalLimits(),
		ModelLimits:  k.GetModelLimits(),
		TokenCap:     k.GetTokenCap(),
		Budget:       k.GetBudget(),
	}
}

// Item is the Check item template of a request for model at now: key,
// workspace, member, every level's limits (narrowed to model's per-model
// limits), credits and alert thresholds. The caller sets the reservation
// id and the estimates.
func Item(l Levels, model string, now time.Time) (*limiterv1.CheckItem, error) {
	k := l.Key
	it := &limiterv1.CheckItem{
		Key:       k.GetId(),
		Model:     model,
		Workspace: k.GetWorkspace(),
		Member:    k.GetOwner(),
		Policy:    ForModel(Effective(KeyPolicy(k), k.GetLimitOverride(), now), model),
		Report:    ForModel(k.GetReportLimits(), model),
	}
	if m := l.Member; m != nil {
		it.Levels = appendLevel(it.Levels, typev1.LimitLevel_LIMIT_LEVEL_MEMBER,
			Effective(m.GetLimits(), m.GetLimitOverride(), now), m.GetReportLimits(), model)
	}
	ws := l.Workspace
	if ws == nil {
		return it, nil
	}
	it.Levels = appendLevel(it.Levels, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE,
		Effective(ws.GetLimits(), ws.GetLimitOverride(), now), ws.GetReportLimits(), model)
	it.AlertThresholds = ws.GetAlertThresholds()
	if g := ws.GetCreditsGrantedUsd(); g != "" {
		n, err := money.ParseSigned(g)
		if err != nil {
			return nil, fmt.Errorf("workspace %s credits: %w", ws.GetId(), err)
		}
		it.Credits = &limiterv1.Credits{GrantedMicros: n.Micros()}
	}
	return it, nil
}

func appendLevel(ls []*limiterv1.LevelPolicy, lv typev1.LimitLevel, p, report *typev1.Policy, model string) []*limiterv1.LevelPolicy {
	p, report = ForModel(p, model), ForModel(report, model)
	if empty(p) && empty(report) {
		return ls
	}
	return append(ls, &limiterv1.LevelPolicy{Level: lv, Policy: p, Report: report})
}

func empty(p *typev1.Policy) bool {
	return p == nil || (!limitsSet(p.GetGlobalLimits()) && len(p.GetModelLimits()) == 0 &&
		p.GetTokenCap().GetTokens() == 0 && p.GetBudget().GetAmountUsd() == "")
}

func limitsSet(l *typev1.Limits) bool {
	return l.GetRpm() > 0 || l.GetRpd() > 0 || l.GetTpm() > 0 || l.GetTpd() > 0
}

// ForModel narrows p's per-model limits to model's (the limiter decides
// one model per item); nil stays nil.
func ForModel(p *typev1.Policy, model string) *typev1.Policy {
	if p == nil || len(p.GetModelLimits()) == 0 {
		return p
	}
	out := &typev1.Policy{GlobalLimits: p.GetGlobalLimits(), TokenCap: p.GetTokenCap(), Budget: p.GetBudget()}
	for _, ml := range p.GetModelLimits() {
		if ml.GetModel() == model {
			out.ModelLimits = []*typev1.ModelLimits{ml}
			break
		}
	}
	return out
}

// Active reports whether o is in force at now.
func Active(o *typev1.Override, now time.Time) bool {
	return o != nil && o.GetExpireTime() != nil && now.Before(o.GetExpireTime().AsTime())
}

// Effective is base with an override in force at now applied: each
// non-zero limit of the override's global limits, each of its models'
// limits, and its token cap and budget when set replace base's. After the
// override expires it is base again, with nothing to undo.
func Effective(base *typev1.Policy, o *typev1.Override, now time.Time) *typev1.Policy {
	if !Active(o, now) || o.GetPolicy() == nil {
		return base
	}
	op := o.GetPolicy()
	out := &typev1.Policy{
		GlobalLimits: mergeLimits(base.GetGlobalLimits(), op.GetGlobalLimits()),
		TokenCap:     base.GetTokenCap(),
		Budget:       base.GetBudget(),
	}
	if op.GetTokenCap().GetTokens() > 0 {
		out.TokenCap = op.GetTokenCap()
	}
	if op.GetBudget().GetAmountUsd() != "" {
		out.Budget = op.GetBudget()
	}
	out.ModelLimits = mergeModels(base.GetModelLimits(), op.GetModelLimits())
	return out
}

func mergeLimits(base, o *typev1.Limits) *typev1.Limits {
	if !limitsSet(o) {
		return base
	}
	out := &typev1.Limits{Rpm: base.GetRpm(), Rpd: base.GetRpd(), Tpm: base.GetTpm(), Tpd: base.GetTpd()}
	for _, f := range []struct {
		dst *int64
		v   int64
	}{{&out.Rpm, o.GetRpm()}, {&out.Rpd, o.GetRpd()}, {&out.Tpm, o.GetTpm()}, {&out.Tpd, o.GetTpd()}} {
		if f.v > 0 {
			*f.dst = f.v
		}
	}
	return out
}

func mergeModels(base, o []*typev1.ModelLimits) []*typev1.ModelLimits {
	if len(o) == 0 {
		return base
	}
	out := make([]*typev1.ModelLimits, 0, len(base)+len(o))
	for _, b := range base {
		ml := b
		for _, x := range o {
			if x.GetModel() == b.GetModel() {
				ml = &typev1.ModelLimits{Model: b.GetModel(), Limits: mergeLimits(b.GetLimits(), x.GetLimits())}
			}
		}
		out = append(out, ml)
	}
	for _, x := range o {
		found := false
		for _, b := range base {
			found = found || b.GetModel() == x.GetModel()
		}
		if !found {
			out = append(out, x)
		}
	}
	return out
}

// Expiry is when the item built at now stops being valid because an
// override in force ends; zero when none is in force. Callers that cache
// items rebuild them at that time.
func Expiry(l Levels, now time.Time) time.Time {
	var t time.Time
	for _, o := range []*typev1.Override{l.Key.GetLimitOverride(), l.Member.GetLimitOverride(), l.Workspace.GetLimitOverride()} {
		if Active(o, now) && (t.IsZero() || o.GetExpireTime().AsTime().Before(t)) {
			t = o.GetExpireTime().AsTime()
		}
	}
	return t
}
