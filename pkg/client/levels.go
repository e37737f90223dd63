package client

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// Level is where limits apply: the client's workspace (all its keys
// together), one member (all the keys it owns) or one key.
type Level struct {
	kind typev1.LimitLevel
	id   string
}

// WorkspaceLevel is the client's workspace.
func WorkspaceLevel() Level { return Level{kind: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE} }

// MemberLevel is one member of the client's workspace.
func MemberLevel(member string) Level {
	return Level{kind: typev1.LimitLevel_LIMIT_LEVEL_MEMBER, id: member}
}

// KeyLevel is one key of the client's workspace.
func KeyLevel(keyID string) Level { return Level{kind: typev1.LimitLevel_LIMIT_LEVEL_KEY, id: keyID} }

// SetLimits replaces the enforced limits of a level: rates, per-model
// limits, token cap and budget (a nil policy removes them all).
func (c *Client) SetLimits(ctx context.Context, lv Level, p *typev1.Policy) error {
	if lv.kind == typev1.LimitLevel_LIMIT_LEVEL_KEY {
		return c.update(ctx, lv.id, []string{"global_limits", "model_limits", "token_cap", "budget"}, func(k *keystorev1.Key) {
			k.GlobalLimits, k.ModelLimits = p.GetGlobalLimits(), p.GetModelLimits()
			k.TokenCap, k.Budget = p.GetTokenCap(), p.GetBudget()
		})
	}
	return c.setLevel(ctx, lv, "limits", func(w *keystorev1.Workspace, m *keystorev1.Member) {
		w.Limits, m.Limits = p, p
	})
}

// SetReportLimits replaces a level's report-mode limits: judged like the
// enforced ones and reported when they would deny, never denying.
func (c *Client) SetReportLimits(ctx context.Context, lv Level, p *typev1.Policy) error {
	if lv.kind == typev1.LimitLevel_LIMIT_LEVEL_KEY {
		return c.update(ctx, lv.id, []string{"report_limits"}, func(k *keystorev1.Key) { k.ReportLimits = p })
	}
	return c.setLevel(ctx, lv, "report_limits", func(w *keystorev1.Workspace, m *keystorev1.Member) {
		w.ReportLimits, m.ReportLimits = p, p
	})
}

// SetOverride replaces the limits p sets, at a level, until until; they
// revert by themselves then. A nil policy removes the override.
func (c *Client) SetOverride(ctx context.Context, lv Level, p *typev1.Policy, until time.Time) error {
	var o *typev1.Override
	if p != nil {
		o = &typev1.Override{Policy: p, ExpireTime: timestamppb.New(until)}
	}
	if lv.kind == typev1.LimitLevel_LIMIT_LEVEL_KEY {
		return c.update(ctx, lv.id, []string{"limit_override"}, func(k *keystorev1.Key) { k.LimitOverride = o })
	}
	return c.setLevel(ctx, lv, "limit_override", func(w *keystorev1.Workspace, m *keystorev1.Member) {
		w.LimitOverride, m.LimitOverride = o, o
	})
}

// setLevel writes one field of the workspace or a member: set fills it on
// both patches and the one the level names is sent.
func (c *Client) setLevel(ctx context.Context, lv Level, field string, set func(*keystorev1.Workspace, *keystorev1.Member)) error {
	w, m := &keystorev1.Workspace{}, &keystorev1.Member{}
	set(w, m)
	mask := &fieldmaskpb.FieldMask{Paths: []string{field}}
	if lv.kind == typev1.LimitLevel_LIMIT_LEVEL_MEMBER {
		_, err := c.Keystore.UpdateMember(ctx, &keystorev1.UpdateMemberRequest{
			Workspace: c.workspace, Member: lv.id, Patch: m, UpdateMask: mask})
		return err
	}
	return c.UpdateWorkspace(ctx, w, field)
}

// UpdateWorkspace writes the fields of patch that paths name to the
// client's workspace (for example "alert_thresholds", "limit_editors",
// "request_log_cap").
func (c *Client) UpdateWorkspace(ctx context.Context, patch *keystorev1.Workspace, paths ...string) error {
	_, err := c.Keystore.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{
		Workspace: c.workspace, Patch: patch, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
	return err
}

// Explain answers, from the limiter's live state, every limit of every
// level of a key (window, used, reserved, remaining, reset) and whether a
// request of model and estimatedTokens would be admitted now.
func (c *Client) Explain(ctx context.Context, keyID, model string, estimatedTokens int64) (*keystorev1.ExplainKeyResponse, error) {
	return c.Keystore.ExplainKey(ctx, &keystorev1.ExplainKeyRequest{
		Workspace: c.workspace, Key: keyID, Model: model, EstimatedTokens: estimatedTokens})
}
