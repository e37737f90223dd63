package keystore_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// TestUpdateMaskPaths: REST users name fields in lowerCamelCase, and a PATCH
// without a mask arrives with one path per sub-field set in the body; a
// sub-field path changes only that sub-field.
func TestUpdateMaskPaths(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	e.workspace(t, "acme", 100, nil)
	ctx := e.root(t)
	k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web",
		GlobalLimits: &typev1.Limits{Rpm: 3, Rpd: 100, Tpd: 5000},
		Budget:       &typev1.Budget{AmountUsd: "5.00", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY}})

	update := func(paths []string, patch *keystorev1.Key) (*keystorev1.Key, error) {
		r, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(), Patch: patch, UpdateMask: mask(paths...)})
		return r.GetKey(), err
	}

	got, err := update([]string{"globalLimits.rpm"}, &keystorev1.Key{GlobalLimits: &typev1.Limits{Rpm: 60}})
	require.NoError(t, err)
	require.Equal(t, int64(60), got.GetGlobalLimits().GetRpm())
	require.Equal(t, int64(100), got.GetGlobalLimits().GetRpd(), "other sub-fields kept")
	require.Equal(t, int64(5000), got.GetGlobalLimits().GetTpd())

	got, err = update([]string{"budget.amount_usd"}, &keystorev1.Key{Budget: &typev1.Budget{AmountUsd: "7.50"}})
	require.NoError(t, err)
	require.Equal(t, "7.50", got.GetBudget().GetAmountUsd())
	require.Equal(t, typev1.ResetPeriod_RESET_PERIOD_MONTHLY, got.GetBudget().GetResetPeriod())

	got, err = update([]string{"globalLimits"}, &keystorev1.Key{GlobalLimits: &typev1.Limits{Tpm: 9}})
	require.NoError(t, err)
	require.True(t, proto.Equal(&typev1.Limits{Tpm: 9}, got.GetGlobalLimits()), "a whole-field path replaces it: %v", got.GetGlobalLimits())

	before, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	for name, paths := range map[string][]string{
		"negative sub-field":  {"global_limits.rpm"},
		"unknown sub-field":   {"global_limits.rps"},
		"too deep":            {"global_limits.rpm.x"},
		"not nestable":        {"name.first"},
		"unknown field":       {"secret"},
		"bad budget subfield": {"budget.amount_usd"},
	} {
		t.Run(name, func(t *testing.T) {
			patch := &keystorev1.Key{GlobalLimits: &typev1.Limits{Rpm: -1}, Budget: &typev1.Budget{AmountUsd: "1.0000001"}}
			_, err := update(paths, patch)
			requireCode(t, codes.InvalidArgument, err)
			after, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
			require.NoError(t, err)
			require.Equal(t, before.GetKey().GetEtag(), after.GetKey().GetEtag(), "nothing written")
		})
	}
}

// TestUpdatePatchEtag: the etag in the patch (the resource as read, sent
// back) is the update's precondition, whatever the mask, as the request's
// own etag is; two different ones are refused.
func TestUpdatePatchEtag(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	e.workspace(t, "acme", 100, nil)
	ctx := e.root(t)
	k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web"})
	ws, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	stale := "1"
	require.NotEqual(t, stale, k.GetEtag())

	for name, req := range map[string]*keystorev1.UpdateKeyRequest{
		"mask":             {Patch: &keystorev1.Key{Name: "x", Etag: stale}, UpdateMask: mask("name")},
		"mask with etag":   {Patch: &keystorev1.Key{Name: "x", Etag: stale}, UpdateMask: mask("etag", "name")},
		"sub-field mask":   {Patch: &keystorev1.Key{GlobalLimits: &typev1.Limits{Rpm: 5}, Etag: stale}, UpdateMask: mask("global_limits.rpm")},
		"both, same stale": {Patch: &keystorev1.Key{Name: "x", Etag: stale}, UpdateMask: mask("name"), Etag: stale},
	} {
		t.Run(name, func(t *testing.T) {
			req.Workspace, req.Key = "acme", k.GetId()
			_, err := e.client.UpdateKey(ctx, req)
			requireCode(t, codes.Aborted, err)
		})
	}
	_, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{Name: "x", Etag: stale}, UpdateMask: mask("name"), Etag: k.GetEtag()})
	requireCode(t, codes.InvalidArgument, err)
	_, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{Etag: k.GetEtag()}, UpdateMask: mask("etag")})
	requireCode(t, codes.InvalidArgument, err)

	_, err = e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{Name: "New", Etag: stale}, UpdateMask: mask("name")})
	requireCode(t, codes.Aborted, err)
	_, err = e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{Etag: ws.GetWorkspace().GetEtag()}, UpdateMask: mask("etag")})
	requireCode(t, codes.InvalidArgument, err)

	after, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.Equal(t, k.GetEtag(), after.GetKey().GetEtag(), "nothing written")
	wsAfter, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Equal(t, ws.GetWorkspace().GetEtag(), wsAfter.GetWorkspace().GetEtag(), "nothing written")

	// The current etag in the patch updates.
	got, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{Name: "renamed", Etag: k.GetEtag()}, UpdateMask: mask("etag", "name")})
	require.NoError(t, err)
	require.Equal(t, "renamed", got.GetKey().GetName())
	gotWS, err := e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{Name: "New", Etag: ws.GetWorkspace().GetEtag()}, UpdateMask: mask("name")})
	require.NoError(t, err)
	require.Equal(t, "New", gotWS.GetWorkspace().GetName())
}
