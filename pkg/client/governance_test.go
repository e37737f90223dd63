package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/client"
)

// TestClientGovernance drives the SDK's governance calls against a real
// keygate: limits at every level, report mode and overrides, explain,
// credits, webhooks, alerts and imported keys.
func TestClientGovernance(t *testing.T) {
	addr := startKeygate(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := client.New(addr, root, client.WithWorkspace("gov"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	_, err = c.Keystore.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: "gov"}})
	require.NoError(t, err)
	_, err = c.Keystore.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: "gov", Member: "ada", Role: keystorev1.Role_ROLE_MEMBER})
	require.NoError(t, err)
	key, _, err := c.CreateKey(ctx, "web", client.KeySpec{Owner: "ada", Limits: &typev1.Limits{Rpm: 60}})
	require.NoError(t, err)

	rpd := func(n int64) *typev1.Policy { return &typev1.Policy{GlobalLimits: &typev1.Limits{Rpd: n}} }
	require.NoError(t, c.SetLimits(ctx, client.WorkspaceLevel(), rpd(100)))
	require.NoError(t, c.SetLimits(ctx, client.MemberLevel("ada"), rpd(50)))
	require.NoError(t, c.SetReportLimits(ctx, client.MemberLevel("ada"), rpd(5)))
	require.NoError(t, c.SetLimits(ctx, client.KeyLevel(key.GetId()), rpd(20)))
	require.NoError(t, c.SetOverride(ctx, client.KeyLevel(key.GetId()), rpd(1), time.Now().Add(time.Hour)))
	require.NoError(t, c.UpdateWorkspace(ctx, &keystorev1.Workspace{AlertThresholds: []int32{80}}, "alert_thresholds"))

	got, err := c.GetKey(ctx, key.GetId())
	require.NoError(t, err)
	require.EqualValues(t, 20, got.GetGlobalLimits().GetRpd(), "SetLimits on a key replaces its limits")
	require.Zero(t, got.GetGlobalLimits().GetRpm())
	require.EqualValues(t, 1, got.GetLimitOverride().GetPolicy().GetGlobalLimits().GetRpd())
	ws, err := c.Keystore.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "gov"})
	require.NoError(t, err)
	require.EqualValues(t, 100, ws.GetWorkspace().GetLimits().GetGlobalLimits().GetRpd())
	require.Equal(t, []int32{80}, ws.GetWorkspace().GetAlertThresholds())

	ex, err := c.Explain(ctx, key.GetId(), "mock-small", 10)
	require.NoError(t, err)
	require.True(t, ex.GetWouldAdmit())
	levels := map[typev1.LimitLevel]int64{}
	for _, s := range ex.GetLimits() {
		if s.GetKind() == limiterv1.LimitKind_LIMIT_KIND_RPD && s.GetMode() == typev1.LimitMode_LIMIT_MODE_ENFORCE {
			levels[s.GetLevel()] = s.GetLimit()
		}
	}
	require.Equal(t, map[typev1.LimitLevel]int64{
		typev1.LimitLevel_LIMIT_LEVEL_KEY: 1, typev1.LimitLevel_LIMIT_LEVEL_MEMBER: 50, typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE: 100,
	}, levels, "the override is in force on the key")
	require.NoError(t, c.SetOverride(ctx, client.KeyLevel(key.GetId()), nil, time.Time{}))

	e, replayed, err := c.AddCredits(ctx, "po-1", "12.50", "first")
	require.NoError(t, err)
	require.False(t, replayed)
	require.Equal(t, "po-1", e.GetId())
	_, replayed, err = c.AddCredits(ctx, "po-1", "12.50", "first")
	require.NoError(t, err)
	require.True(t, replayed)
	_, _, err = c.AdjustCredits(ctx, "fix-1", "-0.50", "")
	require.NoError(t, err)
	cr, err := c.Credits(ctx)
	require.NoError(t, err)
	require.True(t, cr.GetEnabled())
	require.Equal(t, cr.GetGrantedUsd(), cr.GetBalanceUsd())
	entries, err := c.CreditEntries(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	_, _, err = c.AddCredits(ctx, "po-2", "-1", "")
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	hook, secret, err := c.CreateWebhook(ctx, "http://127.0.0.1:1/hook", "")
	require.NoError(t, err)
	require.NotEmpty(t, secret)
	hooks, err := c.Webhooks(ctx)
	require.NoError(t, err)
	require.Len(t, hooks, 1)
	res, err := c.TestWebhook(ctx, hook.GetId())
	require.NoError(t, err)
	require.False(t, res.GetDelivered())
	rotated, err := c.RotateWebhookSecret(ctx, hook.GetId())
	require.NoError(t, err)
	require.NotEqual(t, secret, rotated)
	require.NoError(t, c.DeleteWebhook(ctx, hook.GetId()))
	_, err = c.Alerts(ctx)
	require.NoError(t, err)

	sum := sha256.Sum256([]byte("sk-previous-system-0123456789"))
	imported, err := c.ImportKeys(ctx, &keystorev1.ImportedKey{Name: "old", SecretSha256: hex.EncodeToString(sum[:])})
	require.NoError(t, err)
	require.Len(t, imported, 1)
	legacy, err := c.LegacyKeys(ctx)
	require.NoError(t, err)
	require.Len(t, legacy, 1)
	require.Equal(t, "old", legacy[0].GetName())
	require.True(t, legacy[0].GetLegacy())
}
