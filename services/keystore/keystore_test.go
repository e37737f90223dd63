package keystore_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

func TestKeyLifecycle(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	e.workspace(t, "acme", 0, map[string]keystorev1.Role{"alice": keystorev1.Role_ROLE_OWNER})
	ctx := e.root(t)

	k, secret := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{
		Workspace: "acme", Name: "web", Owner: "alice",
		GlobalLimits: &typev1.Limits{Rpm: 3, Tpd: 100000},
		ModelLimits:  []*typev1.ModelLimits{{Model: "mock-small", Limits: &typev1.Limits{Rpm: 2}}},
		Budget:       &typev1.Budget{AmountUsd: "5.00", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY},
		Labels:       map[string]string{"team": "web"},
	})
	require.True(t, strings.HasPrefix(secret, "kg_"+k.GetId()+"_"))
	require.Equal(t, keystorev1.KeyState_KEY_STATE_ACTIVE, k.GetState())
	require.Equal(t, keyformat.Partial(secret), k.GetPartialKey())
	require.NotEmpty(t, k.GetEtag())

	v, err := e.verify(t.Context(), secret)
	require.NoError(t, err)
	require.Equal(t, k.GetId(), v.GetKey().GetId())
	require.Equal(t, "5.00", v.GetKey().GetBudget().GetAmountUsd())

	got, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.NotContains(t, got.String(), secret[len(secret)-20:], "the secret is never returned again")

	t.Run("duplicate name", func(t *testing.T) {
		_, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web", Owner: "alice"})
		requireCode(t, codes.AlreadyExists, err)
	})

	t.Run("disable and enable", func(t *testing.T) {
		_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch: &keystorev1.Key{Enabled: false}, UpdateMask: mask("enabled")})
		require.NoError(t, err)
		_, err = e.verify(t.Context(), secret)
		requireCode(t, codes.Unauthenticated, err)
		require.Equal(t, "invalid API key", status.Convert(err).Message())
		up, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch: &keystorev1.Key{Enabled: true}, UpdateMask: mask("enabled")})
		require.NoError(t, err)
		require.Equal(t, keystorev1.KeyState_KEY_STATE_ACTIVE, up.GetKey().GetState())
		_, err = e.verify(t.Context(), secret)
		require.NoError(t, err)
	})

	t.Run("update limits and name", func(t *testing.T) {
		up, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch:      &keystorev1.Key{Name: "web2", GlobalLimits: &typev1.Limits{Rpd: 50}},
			UpdateMask: mask("name", "global_limits")})
		require.NoError(t, err)
		require.Equal(t, "web2", up.GetKey().GetName())
		require.Equal(t, int64(50), up.GetKey().GetGlobalLimits().GetRpd())
		require.Equal(t, "5.00", up.GetKey().GetBudget().GetAmountUsd(), "fields outside the mask stay")
		// The old name is free again.
		e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web", Owner: "alice"})
	})

	t.Run("rotate without grace", func(t *testing.T) {
		r, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: k.GetId()})
		require.NoError(t, err)
		require.NotEqual(t, secret, r.GetSecret())
		require.Equal(t, keyformat.Partial(r.GetSecret()), r.GetKey().GetPartialKey())
		_, err = e.verify(t.Context(), secret)
		requireCode(t, codes.Unauthenticated, err)
		_, err = e.verify(t.Context(), r.GetSecret())
		require.NoError(t, err)
		secret = r.GetSecret()
	})

	t.Run("expire keeps the record", func(t *testing.T) {
		x, err := e.client.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: "acme", Key: k.GetId()})
		require.NoError(t, err)
		require.Equal(t, keystorev1.KeyState_KEY_STATE_EXPIRED, x.GetKey().GetState())
		_, err = e.verify(t.Context(), secret)
		requireCode(t, codes.Unauthenticated, err)
		got, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
		require.NoError(t, err)
		require.Equal(t, keystorev1.KeyState_KEY_STATE_EXPIRED, got.GetKey().GetState())
	})

	t.Run("delete", func(t *testing.T) {
		_, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k.GetId()})
		require.NoError(t, err)
		_, err = e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
		requireCode(t, codes.NotFound, err)
		_, err = e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k.GetId()})
		requireCode(t, codes.NotFound, err)
		ev, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme", Key: k.GetId()})
		require.NoError(t, err)
		var actions []string
		for _, a := range ev.GetEvents() {
			actions = append(actions, a.GetAction())
		}
		require.Equal(t, []string{"key.delete", "key.expire", "key.rotate", "key.update", "key.update", "key.update", "key.create"}, actions)
		w, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
		require.NoError(t, err)
		require.Equal(t, int32(2), w.GetWorkspace().GetKeyCount(), "admin-alice and the second web key")
	})
}

func TestVerifyRejects(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	_, secret := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	fk, err := keyformat.Parse(secret)
	require.NoError(t, err)
	other := keyformat.Key{Kind: keyformat.Standard, ID: fk.ID, Secret: strings.Repeat("A", keyformat.SecretLen)}.String()
	unknown, _ := keyformat.New(keyformat.Standard, keyformat.NewID())
	asAdmin := keyformat.Key{Kind: keyformat.Admin, ID: fk.ID, Secret: fk.Secret}.String()
	for name, s := range map[string]string{
		"empty":        "",
		"garbage":      "hello",
		"typo":         typo(secret),
		"wrong secret": other,
		"unknown id":   unknown,
		"wrong prefix": asAdmin,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.verify(t.Context(), s)
			requireCode(t, codes.Unauthenticated, err)
			require.Equal(t, "invalid API key", status.Convert(err).Message())
		})
	}
}

func TestCreateKeyValidation(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	past := timestamppb.New(epoch.Add(-time.Second))
	cases := []struct {
		name  string
		req   *keystorev1.CreateKeyRequest
		field string
	}{
		{"empty name", &keystorev1.CreateKeyRequest{Name: " "}, "name"},
		{"long name", &keystorev1.CreateKeyRequest{Name: strings.Repeat("n", 101)}, "name"},
		{"negative rpm", &keystorev1.CreateKeyRequest{Name: "k", GlobalLimits: &typev1.Limits{Rpm: -1}}, "global_limits.rpm"},
		{"negative model tpd", &keystorev1.CreateKeyRequest{Name: "k", ModelLimits: []*typev1.ModelLimits{{Model: "mock-small", Limits: &typev1.Limits{Tpd: -5}}}}, "model_limits[0].limits.tpd"},
		{"unknown model limit", &keystorev1.CreateKeyRequest{Name: "k", ModelLimits: []*typev1.ModelLimits{{Model: "gpt-9"}}}, "model_limits[0].model"},
		{"unknown allowed model", &keystorev1.CreateKeyRequest{Name: "k", AllowedModels: []string{"mock-small", "nope"}}, "allowed_models[1]"},
		{"expiry in the past", &keystorev1.CreateKeyRequest{Name: "k", ExpireTime: past}, "expire_time"},
		{"expiry now", &keystorev1.CreateKeyRequest{Name: "k", ExpireTime: timestamppb.New(epoch)}, "expire_time"},
		{"bad reset period", &keystorev1.CreateKeyRequest{Name: "k", TokenCap: &typev1.TokenCap{Tokens: 5, ResetPeriod: 42}}, "token_cap.reset_period"},
		{"negative token cap", &keystorev1.CreateKeyRequest{Name: "k", TokenCap: &typev1.TokenCap{Tokens: -5}}, "token_cap.tokens"},
		{"bad budget", &keystorev1.CreateKeyRequest{Name: "k", Budget: &typev1.Budget{AmountUsd: "-1"}}, "budget.amount_usd"},
		{"too precise budget", &keystorev1.CreateKeyRequest{Name: "k", Budget: &typev1.Budget{AmountUsd: "0.0000001"}}, "budget.amount_usd"},
		{"budget bad period", &keystorev1.CreateKeyRequest{Name: "k", Budget: &typev1.Budget{AmountUsd: "1", ResetPeriod: -1}}, "budget.reset_period"},
		{"bad kind", &keystorev1.CreateKeyRequest{Name: "k", Kind: 7}, "kind"},
		{"owner not a member", &keystorev1.CreateKeyRequest{Name: "k", Owner: "mallory"}, "owner"},
		{"empty label key", &keystorev1.CreateKeyRequest{Name: "k", Labels: map[string]string{"": "x"}}, "labels"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.Workspace = "acme"
			_, err := e.client.CreateKey(ctx, c.req)
			requireCode(t, codes.InvalidArgument, err)
			require.True(t, strings.HasPrefix(status.Convert(err).Message(), c.field+":"), status.Convert(err).Message())
		})
	}
	// Nothing was written.
	list, err := e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Empty(t, list.GetKeys())
	ev, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Len(t, ev.GetEvents(), 1, "only workspace.create")
}

func TestUpdateKeyValidation(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k", GlobalLimits: &typev1.Limits{Rpm: 1}})
	cases := []struct {
		name  string
		patch *keystorev1.Key
		paths []string
		field string
	}{
		{"no mask", &keystorev1.Key{Name: "x"}, nil, "update_mask"},
		{"unknown path", &keystorev1.Key{}, []string{"owner"}, "update_mask"},
		{"empty name", &keystorev1.Key{}, []string{"name"}, "patch.name"},
		{"negative", &keystorev1.Key{GlobalLimits: &typev1.Limits{Tpm: -1}}, []string{"global_limits"}, "patch.global_limits.tpm"},
		{"unknown model", &keystorev1.Key{AllowedModels: []string{"x"}}, []string{"allowed_models"}, "patch.allowed_models[0]"},
		{"past expiry", &keystorev1.Key{ExpireTime: timestamppb.New(epoch.Add(-time.Hour))}, []string{"expire_time"}, "patch.expire_time"},
		{"bad budget", &keystorev1.Key{Budget: &typev1.Budget{AmountUsd: "abc"}}, []string{"budget"}, "patch.budget.amount_usd"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(), Patch: c.patch}
			if c.paths != nil {
				req.UpdateMask = mask(c.paths...)
			}
			_, err := e.client.UpdateKey(ctx, req)
			requireCode(t, codes.InvalidArgument, err)
			require.True(t, strings.HasPrefix(status.Convert(err).Message(), c.field), status.Convert(err).Message())
		})
	}
	got, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.Equal(t, k.GetEtag(), got.GetKey().GetEtag(), "nothing written")
}

func TestKeyCapUnderConcurrency(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 10, nil)
	ctx := e.root(t)
	var wg sync.WaitGroup
	errs := make([]error, 50)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k" + string(rune('A'+i))})
		})
	}
	wg.Wait()
	created := 0
	for _, err := range errs {
		if err == nil {
			created++
			continue
		}
		requireCode(t, codes.FailedPrecondition, err)
	}
	require.Equal(t, 10, created)
	list, err := e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: 100})
	require.NoError(t, err)
	require.Len(t, list.GetKeys(), 10)
	w, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Equal(t, int32(10), w.GetWorkspace().GetKeyCount())

	// Deleting one frees a slot; raising max_keys frees more.
	_, err = e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: list.GetKeys()[0].GetId()})
	require.NoError(t, err)
	e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "again"})
	_, err = e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "over"})
	requireCode(t, codes.FailedPrecondition, err)
	_, err = e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{MaxKeys: 11}, UpdateMask: mask("max_keys")})
	require.NoError(t, err)
	e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "over"})
}

func TestEtagConflict(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	first, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(), Etag: k.GetEtag(),
		Patch: &keystorev1.Key{Labels: map[string]string{"a": "1"}}, UpdateMask: mask("labels")})
	require.NoError(t, err)
	require.NotEqual(t, k.GetEtag(), first.GetKey().GetEtag())

	_, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(), Etag: k.GetEtag(),
		Patch: &keystorev1.Key{Labels: map[string]string{"b": "2"}}, UpdateMask: mask("labels")})
	requireCode(t, codes.Aborted, err)
	_, err = e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k.GetId(), Etag: k.GetEtag()})
	requireCode(t, codes.Aborted, err)

	got, err := e.client.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a": "1"}, got.GetKey().GetLabels())
	require.Equal(t, first.GetKey().GetEtag(), got.GetKey().GetEtag())
}

func TestExpiryOnInjectedClock(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	k, secret := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k",
		ExpireTime: timestamppb.New(epoch.Add(time.Hour))})
	require.Equal(t, keystorev1.KeyState_KEY_STATE_ACTIVE, k.GetState())
	e.clock.Advance(time.Hour - time.Nanosecond)
	_, err := e.verify(t.Context(), secret)
	require.NoError(t, err)
	e.clock.Advance(time.Nanosecond)
	_, err = e.verify(t.Context(), secret)
	requireCode(t, codes.Unauthenticated, err)
	got, err := e.client.GetKey(e.root(t), &keystorev1.GetKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.Equal(t, keystorev1.KeyState_KEY_STATE_EXPIRED, got.GetKey().GetState())
	// Disabled and expired: expired wins.
	_, err = e.client.UpdateKey(e.root(t), &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{}, UpdateMask: mask("enabled")})
	require.NoError(t, err)
	list, err := e.client.ListKeys(e.root(t), &keystorev1.ListKeysRequest{Workspace: "acme", State: keystorev1.KeyState_KEY_STATE_EXPIRED})
	require.NoError(t, err)
	require.Len(t, list.GetKeys(), 1)
}

func TestRotationGrace(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	k, old := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	grace := timestamppb.New(epoch.Add(10 * time.Minute))
	_, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: k.GetId(),
		GraceExpireTime: timestamppb.New(epoch.Add(-time.Minute))})
	requireCode(t, codes.InvalidArgument, err)
	r, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: k.GetId(), GraceExpireTime: grace})
	require.NoError(t, err)
	v, err := e.verify(t.Context(), old)
	require.NoError(t, err)
	require.True(t, v.GetSecretExpireTime().AsTime().Equal(grace.AsTime()))
	v, err = e.verify(t.Context(), r.GetSecret())
	require.NoError(t, err)
	require.Nil(t, v.GetSecretExpireTime())

	e.clock.Advance(10 * time.Minute)
	_, err = e.verify(t.Context(), old)
	requireCode(t, codes.Unauthenticated, err)
	_, err = e.verify(t.Context(), r.GetSecret())
	require.NoError(t, err)

	// A second rotation without grace ends both earlier secrets.
	r2, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	_, err = e.verify(t.Context(), r.GetSecret())
	requireCode(t, codes.Unauthenticated, err)
	_, err = e.verify(t.Context(), r2.GetSecret())
	require.NoError(t, err)
}

func TestAuditListing(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, map[string]keystorev1.Role{"alice": keystorev1.Role_ROLE_OWNER})
	ctx := e.root(t)
	k, secret := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	for i := range 3 {
		_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch: &keystorev1.Key{Enabled: i%2 == 1}, UpdateMask: mask("enabled")})
		require.NoError(t, err)
	}
	r, err := e.client.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)

	var all []*keystorev1.AuditEvent
	tok := ""
	for {
		page, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme", PageSize: 2, PageToken: tok})
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.GetEvents()), 2)
		all = append(all, page.GetEvents()...)
		if tok = page.GetNextPageToken(); tok == "" {
			break
		}
	}
	var actions []string
	for _, ev := range all {
		actions = append(actions, ev.GetAction())
		for _, s := range []string{secret, r.GetSecret()} {
			require.NotContains(t, ev.GetOldValue()+ev.GetNewValue(), s[len(s)-20:])
		}
		require.NotContains(t, strings.ToLower(ev.GetOldValue()+ev.GetNewValue()), "hash")
	}
	require.Equal(t, []string{"key.rotate", "key.update", "key.update", "key.update", "key.create",
		"key.create", "member.set", "workspace.create"}, actions)
	require.Equal(t, "root", all[0].GetActor())
	require.Equal(t, "root_token", all[0].GetCredential())
	require.Contains(t, all[1].GetOldValue(), `"enabled":true`)
	// The new value is the key after the change: its state, and no stale
	// etag (the new one is the revision of the write itself).
	require.Contains(t, all[1].GetOldValue(), `KEY_STATE_ACTIVE`)
	require.Contains(t, all[1].GetNewValue(), `KEY_STATE_DISABLED`, all[1].GetNewValue())
	require.Contains(t, all[1].GetOldValue(), `"etag"`)
	require.NotContains(t, all[1].GetNewValue(), `"etag"`)

	perKey, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme", Key: k.GetId()})
	require.NoError(t, err)
	require.Len(t, perKey.GetEvents(), 5)

	_, err = e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme", PageToken: "!!"})
	requireCode(t, codes.InvalidArgument, err)
}

func TestListKeysPagination(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 40, map[string]keystorev1.Role{"alice": keystorev1.Role_ROLE_OWNER, "bob": keystorev1.Role_ROLE_MEMBER})
	ctx := e.root(t)
	for i := range 25 {
		owner := "alice"
		if i%5 == 0 {
			owner = "bob"
		}
		e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k" + string(rune('a'+i)), Owner: owner, Disabled: i%2 == 0})
	}
	list := func(req *keystorev1.ListKeysRequest) []*keystorev1.Key {
		t.Helper()
		req.Workspace = "acme"
		var out []*keystorev1.Key
		for {
			page, err := e.client.ListKeys(ctx, req)
			require.NoError(t, err)
			require.LessOrEqual(t, len(page.GetKeys()), int(req.GetPageSize()))
			out = append(out, page.GetKeys()...)
			if page.GetNextPageToken() == "" {
				return out
			}
			req.PageToken = page.GetNextPageToken()
		}
	}
	all := list(&keystorev1.ListKeysRequest{PageSize: 10})
	require.Len(t, all, 27) // 25 plus two admin keys
	seen := map[string]bool{}
	for _, k := range all {
		require.False(t, seen[k.GetId()])
		seen[k.GetId()] = true
	}
	cases := []struct {
		name string
		req  *keystorev1.ListKeysRequest
		want int
	}{
		{"disabled", &keystorev1.ListKeysRequest{PageSize: 4, State: keystorev1.KeyState_KEY_STATE_DISABLED}, 13},
		{"active", &keystorev1.ListKeysRequest{PageSize: 4, State: keystorev1.KeyState_KEY_STATE_ACTIVE}, 14},
		{"admin kind", &keystorev1.ListKeysRequest{PageSize: 1, Kind: keystorev1.KeyKind_KEY_KIND_ADMIN}, 2},
		{"owner bob", &keystorev1.ListKeysRequest{PageSize: 2, Owner: "bob"}, 6},
		{"exact page", &keystorev1.ListKeysRequest{PageSize: 27}, 27},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { require.Len(t, list(c.req), c.want) })
	}
	_, err := e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: -1})
	requireCode(t, codes.InvalidArgument, err)
	_, err = e.client.ListKeys(ctx, &keystorev1.ListKeysRequest{Workspace: "acme", PageToken: "bm9wZQ"})
	requireCode(t, codes.InvalidArgument, err)
}

func TestRegistry(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	ctx := e.root(t)
	providers := []struct {
		name  string
		p     *keystorev1.Provider
		field string
	}{
		{"bad id", &keystorev1.Provider{Id: "Open AI", BaseUrl: "mock"}, "provider.id"},
		{"bad url", &keystorev1.Provider{Id: "x", BaseUrl: "ftp://x"}, "provider.base_url"},
		{"url with credentials", &keystorev1.Provider{Id: "x", BaseUrl: "https://u:p@x"}, "provider.base_url"},
		{"key instead of env name", &keystorev1.Provider{Id: "x", BaseUrl: "https://x", ApiKeyEnv: "sk-abc def"}, "provider.api_key_env"},
		{"relative file", &keystorev1.Provider{Id: "x", BaseUrl: "https://x", ApiKeyFile: "key.txt"}, "provider.api_key_file"},
		{"both", &keystorev1.Provider{Id: "x", BaseUrl: "https://x", ApiKeyFile: "/k", ApiKeyEnv: "K"}, "provider.api_key_env"},
		{"unknown kind", &keystorev1.Provider{Id: "x", BaseUrl: "https://x", Kind: 7}, "provider.kind"},
	}
	for _, c := range providers {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.client.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: c.p})
			requireCode(t, codes.InvalidArgument, err)
			require.True(t, strings.HasPrefix(status.Convert(err).Message(), c.field), status.Convert(err).Message())
		})
	}
	models := []struct {
		name  string
		m     *keystorev1.Model
		field string
	}{
		{"no price", &keystorev1.Model{Id: "m", Provider: "mock", InputPricePerMillionUsd: "1"}, "model.output_price_per_million_usd"},
		{"bad price", &keystorev1.Model{Id: "m", Provider: "mock", InputPricePerMillionUsd: "1,5", OutputPricePerMillionUsd: "1"}, "model.input_price_per_million_usd"},
		{"unknown provider", &keystorev1.Model{Id: "m", Provider: "nope", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "1"}, "model.provider"},
		{"bad cache price", &keystorev1.Model{Id: "m", Provider: "mock", InputPricePerMillionUsd: "1", OutputPricePerMillionUsd: "1", CacheReadPricePerMillionUsd: "cheap"}, "model.cache_read_price_per_million_usd"},
	}
	for _, c := range models {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.client.CreateModel(ctx, &keystorev1.CreateModelRequest{Model: c.m})
			requireCode(t, codes.InvalidArgument, err)
			require.True(t, strings.HasPrefix(status.Convert(err).Message(), c.field), status.Convert(err).Message())
		})
	}
	ms, err := e.client.ListModels(ctx, &keystorev1.ListModelsRequest{})
	require.NoError(t, err)
	require.Len(t, ms.GetModels(), 2)
	require.Equal(t, "mock-large", ms.GetModels()[0].GetUpstreamModel())

	up, err := e.client.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: "mock-small",
		Patch: &keystorev1.Model{InputPricePerMillionUsd: "0.20"}, UpdateMask: mask("input_price_per_million_usd")})
	require.NoError(t, err)
	require.Equal(t, "0.20", up.GetModel().GetInputPricePerMillionUsd())
	_, err = e.client.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: "mock-small",
		Patch: &keystorev1.Model{}, UpdateMask: mask("output_price_per_million_usd")})
	requireCode(t, codes.InvalidArgument, err)

	up, err = e.client.UpdateModel(ctx, &keystorev1.UpdateModelRequest{Model: "mock-small",
		Patch:      &keystorev1.Model{CacheWritePricePerMillionUsd: "0.25", CacheReadPricePerMillionUsd: "0.02"},
		UpdateMask: mask("cache_write_price_per_million_usd", "cache_read_price_per_million_usd")})
	require.NoError(t, err)
	require.Equal(t, "0.25", up.GetModel().GetCacheWritePricePerMillionUsd())
	require.Equal(t, "0.02", up.GetModel().GetCacheReadPricePerMillionUsd())

	t.Run("update provider", func(t *testing.T) {
		_, err := e.client.CreateProvider(ctx, &keystorev1.CreateProviderRequest{Provider: &keystorev1.Provider{Id: "claude", BaseUrl: "https://api.anthropic.com/v1", ApiKeyEnv: "ANTHROPIC_API_KEY"}})
		require.NoError(t, err)
		pr, err := e.client.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: "claude",
			Patch:      &keystorev1.Provider{Kind: keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC, ApiKeyFile: "/run/secrets/anthropic"},
			UpdateMask: mask("kind", "api_key_file")})
		require.NoError(t, err)
		require.Equal(t, keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC, pr.GetProvider().GetKind())
		require.Equal(t, "/run/secrets/anthropic", pr.GetProvider().GetApiKeyFile())
		require.Empty(t, pr.GetProvider().GetApiKeyEnv(), "one credential reference")
		got, err := e.client.GetProvider(ctx, &keystorev1.GetProviderRequest{Provider: "claude"})
		require.NoError(t, err)
		require.True(t, proto.Equal(pr.GetProvider(), got.GetProvider()))
		_, err = e.client.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: "claude",
			Patch: &keystorev1.Provider{BaseUrl: "ftp://x"}, UpdateMask: mask("base_url")})
		requireCode(t, codes.InvalidArgument, err)
		_, err = e.client.UpdateProvider(ctx, &keystorev1.UpdateProviderRequest{Provider: "nope",
			Patch: &keystorev1.Provider{BaseUrl: "https://x"}, UpdateMask: mask("base_url")})
		requireCode(t, codes.NotFound, err)
		_, err = e.client.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: "claude"})
		require.NoError(t, err)
	})

	_, err = e.client.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: "mock"})
	requireCode(t, codes.FailedPrecondition, err)
	for _, m := range []string{"mock-small", "mock-large"} {
		_, err = e.client.DeleteModel(ctx, &keystorev1.DeleteModelRequest{Model: m})
		require.NoError(t, err)
	}
	_, err = e.client.DeleteProvider(ctx, &keystorev1.DeleteProviderRequest{Provider: "mock"})
	require.NoError(t, err)
	_, err = e.client.GetModel(ctx, &keystorev1.GetModelRequest{Model: "mock-small"})
	requireCode(t, codes.NotFound, err)
}

// typo changes the last character of s: to "x", or to "y" when it is an
// "x" already (one key in 62 ends in "x", and then "x" changes nothing).
func typo(s string) string {
	last := "x"
	if strings.HasSuffix(s, last) {
		last = "y"
	}
	return s[:len(s)-1] + last
}
