package keystore

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/pkg/money"
)

// FuzzCreateKeyBody feeds REST bodies of POST /v1/workspaces/{ws}/keys,
// decoded as the gateway decodes them, through createKey. The workspace is
// full (one key of max one), so a request that passes every check ends at
// ErrKeyCap and the store never grows: the fuzzer sees validation only.
func FuzzCreateKeyBody(f *testing.F) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := etcdtest.Start(f)
	s, err := New(f.Context(), Config{Etcd: c.Client, Clock: clock.NewFake(now), RootToken: "fuzz-root-token-0123456789"})
	require.NoError(f, err)
	root := &principal{root: true, subject: rootSubject, credential: credRootToken}
	ctx := f.Context()
	_, err = s.createProvider(ctx, root, &keystorev1.Provider{Id: "mock", BaseUrl: "mock"})
	require.NoError(f, err)
	for _, m := range []string{"mock-small", "mock-large"} {
		_, err = s.createModel(ctx, root, &keystorev1.Model{Id: m, Provider: "mock", InputPricePerMillionUsd: "0.15", OutputPricePerMillionUsd: "0.60"})
		require.NoError(f, err)
	}
	_, err = s.createWorkspace(ctx, root, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: "acme", MaxKeys: 1}})
	require.NoError(f, err)
	_, err = s.setMember(ctx, root, &keystorev1.SetMemberRequest{Workspace: "acme", Member: "alice", Role: keystorev1.Role_ROLE_MEMBER})
	require.NoError(f, err)
	_, err = s.createKey(ctx, root, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "first"})
	require.NoError(f, err)

	// Seeds live in testdata/fuzz/FuzzCreateKeyBody.
	dec := protojson.UnmarshalOptions{DiscardUnknown: false}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req keystorev1.CreateKeyRequest
		if dec.Unmarshal(body, &req) != nil {
			return
		}
		// The path names the workspace; the body's own is overwritten.
		req.Workspace = "acme"
		_, err := s.createKey(t.Context(), root, &req)
		require.Error(t, err, "the workspace is full, yet a key was created")
		if fe, ok := errors.AsType[*FieldError](err); ok {
			require.NotEmpty(t, fe.Field, "rejection names no field: %v", err)
			require.NotEmpty(t, fe.Reason, "rejection gives no reason: %v", err)
			return
		}
		require.ErrorIs(t, err, ErrKeyCap, "neither a field error nor the key cap")
		requireValidCreate(t, &req, now)
	})
}

// requireValidCreate states, independently of validate.go, what an accepted
// create request satisfies.
func requireValidCreate(t *testing.T, req *keystorev1.CreateKeyRequest, now time.Time) {
	t.Helper()
	n := utf8.RuneCountInString(req.GetName())
	require.True(t, utf8.ValidString(req.GetName()), "name not UTF-8")
	require.NotEmpty(t, strings.TrimSpace(req.GetName()), "blank name")
	require.LessOrEqual(t, n, maxNameLen, "name too long")
	require.NotContains(t, req.GetName(), "/")
	require.Contains(t, []keystorev1.KeyKind{keystorev1.KeyKind_KEY_KIND_UNSPECIFIED, keystorev1.KeyKind_KEY_KIND_STANDARD}, req.GetKind(),
		"the root owner gets no admin key; other kinds are invalid")
	require.Contains(t, []string{"", rootSubject, "alice"}, req.GetOwner(), "owner not a member")
	if e := req.GetExpireTime(); e != nil {
		require.NoError(t, e.CheckValid())
		require.True(t, e.AsTime().After(now), "expiry not in the future")
	}
	requireLimits(t, req.GetGlobalLimits())
	models := map[string]bool{"mock-small": true, "mock-large": true}
	seen := map[string]bool{}
	for _, ml := range req.GetModelLimits() {
		require.True(t, models[ml.GetModel()], "unknown model %q", ml.GetModel())
		require.False(t, seen[ml.GetModel()], "model %q twice", ml.GetModel())
		seen[ml.GetModel()] = true
		requireLimits(t, ml.GetLimits())
	}
	for _, m := range req.GetAllowedModels() {
		require.True(t, models[m], "unknown allowed model %q", m)
	}
	if tc := req.GetTokenCap(); tc != nil {
		require.GreaterOrEqual(t, tc.GetTokens(), int64(0))
		requirePeriod(t, tc.GetResetPeriod())
	}
	if b := req.GetBudget(); b != nil {
		amount, err := money.Parse(b.GetAmountUsd())
		require.NoError(t, err)
		require.GreaterOrEqual(t, int64(amount), int64(0))
		requirePeriod(t, b.GetResetPeriod())
	}
	require.LessOrEqual(t, len(req.GetLabels()), maxLabels)
	for k, v := range req.GetLabels() {
		require.NotEmpty(t, k)
		require.LessOrEqual(t, len(k), maxLabelKey)
		require.LessOrEqual(t, len(v), maxLabelVal)
	}
}

func requireLimits(t *testing.T, l *typev1.Limits) {
	t.Helper()
	for _, v := range []int64{l.GetRpm(), l.GetRpd(), l.GetTpm(), l.GetTpd()} {
		require.GreaterOrEqual(t, v, int64(0), "negative limit in %v", l)
	}
}

func requirePeriod(t *testing.T, p typev1.ResetPeriod) {
	t.Helper()
	_, named := typev1.ResetPeriod_name[int32(p)]
	require.True(t, named, "reset period %d has no name", p)
}
