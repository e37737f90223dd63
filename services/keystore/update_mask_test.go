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
