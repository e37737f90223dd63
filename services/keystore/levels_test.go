package keystore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/oidc"
	"github.com/keygate/keygate/internal/oidc/oidctest"
	"github.com/keygate/keygate/services/keystore"
)

func paths(p ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: p} }

func rpm(n int64) *typev1.Policy { return &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: n}} }

func (e *env) override(n int64, in time.Duration) *typev1.Override {
	return &typev1.Override{Policy: rpm(n), ExpireTime: timestamppb.New(e.clock.Now().Add(in)), Reason: "launch"}
}

// auditActions lists a workspace's audit actions, newest first.
func (e *env) auditActions(t *testing.T, ws, key string) []*keystorev1.AuditEvent {
	t.Helper()
	resp, err := e.client.ListAuditEvents(e.root(t), &keystorev1.ListAuditEventsRequest{Workspace: ws, Key: key, PageSize: 1000})
	require.NoError(t, err)
	return resp.GetEvents()
}

func (e *env) getWorkspace(t *testing.T, ws string) *keystorev1.Workspace {
	t.Helper()
	resp, err := e.client.GetWorkspace(e.root(t), &keystorev1.GetWorkspaceRequest{Workspace: ws})
	require.NoError(t, err)
	return resp.GetWorkspace()
}

func (e *env) member(t *testing.T, ws, m string) *keystorev1.Member {
	t.Helper()
	resp, err := e.client.ListMembers(e.root(t), &keystorev1.ListMembersRequest{Workspace: ws})
	require.NoError(t, err)
	for _, x := range resp.GetMembers() {
		if x.GetMember() == m {
			return x
		}
	}
	t.Fatalf("no member %q", m)
	return nil
}

func TestWorkspaceLimits(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	keys := e.workspace(t, "acme", 0, map[string]keystorev1.Role{
		"olga": keystorev1.Role_ROLE_OWNER, "adam": keystorev1.Role_ROLE_ADMIN, "mia": keystorev1.Role_ROLE_MEMBER,
	})
	update := func(token string, patch *keystorev1.Workspace, p ...string) (*keystorev1.Workspace, error) {
		resp, err := e.client.UpdateWorkspace(as(t.Context(), token), &keystorev1.UpdateWorkspaceRequest{
			Workspace: "acme", Patch: patch, UpdateMask: paths(p...)})
		return resp.GetWorkspace(), err
	}

	t.Run("owner sets every setting, audited", func(t *testing.T) {
		patch := &keystorev1.Workspace{
			Limits:       &typev1.Policy{GlobalLimits: &typev1.Limits{Tpd: 1000}, Budget: &typev1.Budget{AmountUsd: "50"}},
			ReportLimits: rpm(10), LimitOverride: e.override(100, time.Hour),
			LimitEditors: keystorev1.LimitEditors_LIMIT_EDITORS_ADMINS, RequestLogCap: 500, AlertThresholds: []int32{50, 80, 100},
		}
		w, err := update(keys["olga"], patch, "limits", "report_limits", "limit_override", "limit_editors", "request_log_cap", "alert_thresholds")
		require.NoError(t, err)
		require.Equal(t, int64(1000), w.GetLimits().GetGlobalLimits().GetTpd())
		require.Equal(t, typev1.ResetPeriod_RESET_PERIOD_NEVER, w.GetLimits().GetBudget().GetResetPeriod(), "stored as for keys")
		require.Equal(t, []int32{50, 80, 100}, w.GetAlertThresholds())
		require.True(t, proto.Equal(w, e.getWorkspace(t, "acme")), "stored as returned")
		ev := e.auditActions(t, "acme", "")[0]
		require.Equal(t, "workspace.update", ev.GetAction())
		require.Equal(t, "olga", ev.GetActor())
		require.NotContains(t, ev.GetOldValue(), "alertThresholds")
		require.Contains(t, ev.GetNewValue(), "alertThresholds")
	})
	t.Run("a nested path changes only that field", func(t *testing.T) {
		w, err := update(keys["adam"], &keystorev1.Workspace{Limits: rpm(7)}, "limits.globalLimits.rpm")
		require.NoError(t, err)
		require.Equal(t, int64(7), w.GetLimits().GetGlobalLimits().GetRpm())
		require.Equal(t, int64(1000), w.GetLimits().GetGlobalLimits().GetTpd())
		require.Equal(t, "50", w.GetLimits().GetBudget().GetAmountUsd())
	})
	t.Run("admins set limits, not the name", func(t *testing.T) {
		_, err := update(keys["adam"], &keystorev1.Workspace{Name: "x"}, "name")
		requireCode(t, codes.PermissionDenied, err)
	})
	t.Run("members set nothing", func(t *testing.T) {
		_, err := update(keys["mia"], &keystorev1.Workspace{Limits: rpm(1)}, "limits")
		requireCode(t, codes.PermissionDenied, err)
	})
	before := e.getWorkspace(t, "acme")
	for _, c := range []struct {
		name  string
		patch *keystorev1.Workspace
		mask  []string
	}{
		{"negative limit", &keystorev1.Workspace{Limits: rpm(-1)}, []string{"limits"}},
		{"unknown model", &keystorev1.Workspace{Limits: &typev1.Policy{ModelLimits: []*typev1.ModelLimits{{Model: "nope"}}}}, []string{"limits"}},
		{"bad budget", &keystorev1.Workspace{ReportLimits: &typev1.Policy{Budget: &typev1.Budget{AmountUsd: "lots"}}}, []string{"report_limits"}},
		{"override in the past", &keystorev1.Workspace{LimitOverride: e.override(1, -time.Second)}, []string{"limit_override"}},
		{"override without expiry", &keystorev1.Workspace{LimitOverride: &typev1.Override{Policy: rpm(1)}}, []string{"limit_override"}},
		{"override without limits", &keystorev1.Workspace{LimitOverride: &typev1.Override{ExpireTime: timestamppb.New(e.clock.Now().Add(time.Hour))}}, []string{"limit_override"}},
		{"thresholds unsorted", &keystorev1.Workspace{AlertThresholds: []int32{80, 50}}, []string{"alert_thresholds"}},
		{"threshold twice", &keystorev1.Workspace{AlertThresholds: []int32{50, 50}}, []string{"alert_thresholds"}},
		{"threshold zero", &keystorev1.Workspace{AlertThresholds: []int32{0}}, []string{"alert_thresholds"}},
		{"threshold too high", &keystorev1.Workspace{AlertThresholds: []int32{1001}}, []string{"alert_thresholds"}},
		{"too many thresholds", &keystorev1.Workspace{AlertThresholds: []int32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}}, []string{"alert_thresholds"}},
		{"limit editors", &keystorev1.Workspace{LimitEditors: 9}, []string{"limit_editors"}},
		{"request log cap", &keystorev1.Workspace{RequestLogCap: -1}, []string{"request_log_cap"}},
		{"credits are output only", &keystorev1.Workspace{CreditsGrantedUsd: "100"}, []string{"credits_granted_usd"}},
		{"unknown path", &keystorev1.Workspace{}, []string{"limits.nope"}},
		{"path into a list", &keystorev1.Workspace{}, []string{"limits.model_limits.model"}},
		{"empty mask", &keystorev1.Workspace{}, nil},
	} {
		t.Run("invalid: "+c.name, func(t *testing.T) {
			_, err := update(keys["olga"], c.patch, c.mask...)
			requireCode(t, codes.InvalidArgument, err)
			require.True(t, proto.Equal(before, e.getWorkspace(t, "acme")), "nothing changed")
		})
	}
	t.Run("create with limits", func(t *testing.T) {
		resp, err := e.client.CreateWorkspace(e.root(t), &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{
			Id: "beta", Limits: rpm(5), AlertThresholds: []int32{90}}})
		require.NoError(t, err)
		require.Equal(t, int64(5), resp.GetWorkspace().GetLimits().GetGlobalLimits().GetRpm())
		_, err = e.client.CreateWorkspace(e.root(t), &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{
			Id: "gamma", AlertThresholds: []int32{90, 10}}})
		requireCode(t, codes.InvalidArgument, err)
	})
}

func TestUpdateMember(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	keys := e.workspace(t, "acme", 0, map[string]keystorev1.Role{
		"olga": keystorev1.Role_ROLE_OWNER, "adam": keystorev1.Role_ROLE_ADMIN, "mia": keystorev1.Role_ROLE_MEMBER,
	})
	update := func(token, member string, patch *keystorev1.Member, p ...string) (*keystorev1.Member, error) {
		resp, err := e.client.UpdateMember(as(t.Context(), token), &keystorev1.UpdateMemberRequest{
			Workspace: "acme", Member: member, Patch: patch, UpdateMask: paths(p...)})
		return resp.GetMember(), err
	}
	e.clock.Advance(time.Minute)
	m, err := update(keys["adam"], "mia", &keystorev1.Member{Limits: rpm(30), ReportLimits: rpm(20), LimitOverride: e.override(60, time.Hour)},
		"limits", "reportLimits", "limit_override")
	require.NoError(t, err)
	require.Equal(t, int64(30), m.GetLimits().GetGlobalLimits().GetRpm())
	require.Equal(t, e.clock.Now(), m.GetUpdateTime().AsTime())
	require.Equal(t, keystorev1.Role_ROLE_MEMBER, m.GetRole())
	require.True(t, proto.Equal(m, e.member(t, "acme", "mia")))
	ev := e.auditActions(t, "acme", "")[0]
	require.Equal(t, "member.update", ev.GetAction())
	require.Contains(t, ev.GetNewValue(), `"30"`)

	t.Run("a new role keeps the limits", func(t *testing.T) {
		_, err := e.client.SetMember(e.root(t), &keystorev1.SetMemberRequest{Workspace: "acme", Member: "mia", Role: keystorev1.Role_ROLE_ADMIN})
		require.NoError(t, err)
		require.Equal(t, int64(30), e.member(t, "acme", "mia").GetLimits().GetGlobalLimits().GetRpm())
		_, err = e.client.SetMember(e.root(t), &keystorev1.SetMemberRequest{Workspace: "acme", Member: "mia", Role: keystorev1.Role_ROLE_MEMBER})
		require.NoError(t, err)
	})
	t.Run("members set no limits, their own neither", func(t *testing.T) {
		_, err := update(keys["mia"], "mia", &keystorev1.Member{Limits: rpm(1000)}, "limits")
		requireCode(t, codes.PermissionDenied, err)
	})
	t.Run("unknown member", func(t *testing.T) {
		_, err := update(keys["olga"], "nobody", &keystorev1.Member{Limits: rpm(1)}, "limits")
		requireCode(t, codes.NotFound, err)
	})
	before := e.member(t, "acme", "mia")
	for _, c := range []struct {
		name  string
		patch *keystorev1.Member
		mask  []string
	}{
		{"negative", &keystorev1.Member{Limits: rpm(-5)}, []string{"limits"}},
		{"role is not a limit", &keystorev1.Member{Role: keystorev1.Role_ROLE_OWNER}, []string{"role"}},
		{"override in the past", &keystorev1.Member{LimitOverride: e.override(1, -time.Minute)}, []string{"limit_override"}},
		{"no mask", &keystorev1.Member{Limits: rpm(1)}, nil},
	} {
		t.Run("invalid: "+c.name, func(t *testing.T) {
			_, err := update(keys["olga"], "mia", c.patch, c.mask...)
			requireCode(t, codes.InvalidArgument, err)
			require.True(t, proto.Equal(before, e.member(t, "acme", "mia")), "nothing changed")
		})
	}
}

func TestKeyReportLimitsAndOverride(t *testing.T) {
	e := newEnv(t)
	e.seedRegistry(t)
	ctx := e.root(t)
	e.workspace(t, "acme", 0, nil)
	k, _ := e.createKey(t, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "web",
		ReportLimits: rpm(5), LimitOverride: e.override(50, time.Hour)})
	require.Equal(t, int64(5), k.GetReportLimits().GetGlobalLimits().GetRpm())
	require.Equal(t, int64(50), k.GetLimitOverride().GetPolicy().GetGlobalLimits().GetRpm())

	resp, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{ReportLimits: &typev1.Policy{GlobalLimits: &typev1.Limits{Tpd: 9}}}, UpdateMask: paths("reportLimits.globalLimits.tpd")})
	require.NoError(t, err)
	require.Equal(t, int64(5), resp.GetKey().GetReportLimits().GetGlobalLimits().GetRpm(), "a nested path keeps the rest")
	require.Equal(t, int64(9), resp.GetKey().GetReportLimits().GetGlobalLimits().GetTpd())

	resp, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{}, UpdateMask: paths("limit_override")})
	require.NoError(t, err)
	require.Nil(t, resp.GetKey().GetLimitOverride(), "cleared")

	for _, c := range []struct {
		name string
		req  *keystorev1.CreateKeyRequest
	}{
		{"override without policy", &keystorev1.CreateKeyRequest{LimitOverride: &typev1.Override{ExpireTime: timestamppb.New(e.clock.Now().Add(time.Hour))}}},
		{"override expired", &keystorev1.CreateKeyRequest{LimitOverride: e.override(5, -time.Hour)}},
		{"override without expiry", &keystorev1.CreateKeyRequest{LimitOverride: &typev1.Override{Policy: rpm(5)}}},
		{"report limit negative", &keystorev1.CreateKeyRequest{ReportLimits: rpm(-1)}},
	} {
		t.Run("invalid: "+c.name, func(t *testing.T) {
			c.req.Workspace, c.req.Name = "acme", "bad"
			_, err := e.client.CreateKey(ctx, c.req)
			requireCode(t, codes.InvalidArgument, err)
			_, err = e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
				Patch: &keystorev1.Key{ReportLimits: c.req.ReportLimits, LimitOverride: c.req.LimitOverride}, UpdateMask: paths("report_limits", "limit_override")})
			requireCode(t, codes.InvalidArgument, err)
		})
	}
	require.Equal(t, int32(1), e.getWorkspace(t, "acme").GetKeyCount(), "none of the bad ones created")
}

func TestLimitEditors(t *testing.T) {
	e := newEnv(t)
	keys := e.workspace(t, "acme", 0, map[string]keystorev1.Role{
		"adam": keystorev1.Role_ROLE_ADMIN, "mia": keystorev1.Role_ROLE_MEMBER,
	})
	mia := as(t.Context(), keys["mia"])
	k, _ := e.createKey(t, mia, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "mine", GlobalLimits: &typev1.Limits{Rpm: 5}})
	setBudget := func(ctx context.Context) error {
		_, err := e.client.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch: &keystorev1.Key{Budget: &typev1.Budget{AmountUsd: "100"}}, UpdateMask: paths("budget")})
		return err
	}
	require.NoError(t, setBudget(mia), "LIMIT_EDITORS_UNSPECIFIED: the key's owner may")

	_, err := e.client.UpdateWorkspace(e.root(t), &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{LimitEditors: keystorev1.LimitEditors_LIMIT_EDITORS_ADMINS}, UpdateMask: paths("limit_editors")})
	require.NoError(t, err)

	err = setBudget(mia)
	requireCode(t, codes.PermissionDenied, err)
	require.Contains(t, err.Error(), "LIMIT_EDITORS_ADMINS")
	for _, f := range []string{"global_limits.rpm", "model_limits", "token_cap", "report_limits", "limit_override"} {
		_, err := e.client.UpdateKey(mia, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
			Patch: &keystorev1.Key{}, UpdateMask: paths(f)})
		requireCode(t, codes.PermissionDenied, err)
	}
	_, err = e.client.CreateKey(mia, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "limited", Budget: &typev1.Budget{AmountUsd: "1"}})
	requireCode(t, codes.PermissionDenied, err)

	_, err = e.client.UpdateKey(mia, &keystorev1.UpdateKeyRequest{Workspace: "acme", Key: k.GetId(),
		Patch: &keystorev1.Key{Name: "renamed"}, UpdateMask: paths("name")})
	require.NoError(t, err, "other fields stay the owner's")
	_, err = e.client.CreateKey(mia, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "plain"})
	require.NoError(t, err)
	require.NoError(t, setBudget(as(t.Context(), keys["adam"])), "admins may")
}

func TestVerifyKeyReturnsLevels(t *testing.T) {
	e := newEnv(t)
	keys := e.workspace(t, "acme", 0, map[string]keystorev1.Role{"mia": keystorev1.Role_ROLE_MEMBER})
	_, err := e.client.UpdateWorkspace(e.root(t), &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{Limits: rpm(100), AlertThresholds: []int32{80}}, UpdateMask: paths("limits", "alert_thresholds")})
	require.NoError(t, err)
	_, err = e.client.UpdateMember(e.root(t), &keystorev1.UpdateMemberRequest{Workspace: "acme", Member: "mia",
		Patch: &keystorev1.Member{Limits: rpm(10)}, UpdateMask: paths("limits")})
	require.NoError(t, err)
	_, secret := e.createKey(t, as(t.Context(), keys["mia"]), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	resp, err := e.verify(t.Context(), secret)
	require.NoError(t, err)
	require.Equal(t, int64(100), resp.GetWorkspace().GetLimits().GetGlobalLimits().GetRpm())
	require.Equal(t, []int32{80}, resp.GetWorkspace().GetAlertThresholds())
	require.Equal(t, int32(2), resp.GetWorkspace().GetKeyCount())
	require.Equal(t, int64(10), resp.GetMember().GetLimits().GetGlobalLimits().GetRpm())
	require.Equal(t, "mia", resp.GetMember().GetMember())

	rk, rsecret := e.createKey(t, e.root(t), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "root-owned"})
	resp, err = e.verify(t.Context(), rsecret)
	require.NoError(t, err)
	require.Equal(t, rk.GetId(), resp.GetKey().GetId())
	require.Nil(t, resp.GetMember(), "root is no member")
	require.Equal(t, "acme", resp.GetWorkspace().GetId())
}

func TestWatchLevelChanges(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, map[string]keystorev1.Role{"mia": keystorev1.Role_ROLE_MEMBER})
	ctx := e.root(t)
	st := e.watch(t, e.head(t))
	_, err := e.client.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{Limits: rpm(1)}, UpdateMask: paths("limits")})
	require.NoError(t, err)
	_, err = e.client.UpdateMember(ctx, &keystorev1.UpdateMemberRequest{Workspace: "acme", Member: "mia",
		Patch: &keystorev1.Member{Limits: rpm(1)}, UpdateMask: paths("limits")})
	require.NoError(t, err)
	_, err = e.client.RemoveMember(ctx, &keystorev1.RemoveMemberRequest{Workspace: "acme", Member: "mia"})
	require.NoError(t, err)
	got := until(t, st, e.head(t))
	var kinds []string
	for _, m := range got {
		kinds = append(kinds, m.GetType().String()+" "+m.GetWorkspace()+" "+m.GetMember())
	}
	ws, mem := keystorev1.WatchKeyChangesResponse_TYPE_WORKSPACE_UPDATED.String(), keystorev1.WatchKeyChangesResponse_TYPE_MEMBER_UPDATED.String()
	require.Equal(t, []string{ws + " acme ", mem + " acme mia", mem + " acme mia"}, kinds)
}

// TestAuditIDsAcrossReplicas: two keystores writing in the same instant
// (one clock that does not move) never overwrite each other's events.
func TestAuditIDsAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	other, _ := e.replica(t)
	ctx := e.root(t)
	for i := range 5 {
		for _, c := range []keystorev1.KeystoreServiceClient{e.client, other} {
			_, err := c.UpdateWorkspace(ctx, &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
				Patch: &keystorev1.Workspace{RequestLogCap: int64(i + 1)}, UpdateMask: paths("request_log_cap")})
			require.NoError(t, err)
		}
	}
	events := e.auditActions(t, "acme", "")
	require.Len(t, events, 11) // create + 10 updates
	seen := map[string]bool{}
	for _, ev := range events {
		require.False(t, seen[ev.GetId()])
		seen[ev.GetId()] = true
	}
}

// TestLimitEditorsSSO: the policy judges an SSO caller by its role in the
// workspace the call names.
func TestLimitEditorsSSO(t *testing.T) {
	iss := oidctest.New(t, "https://sso.example", "console")
	e := newEnv(t, func(c *keystore.Config) {
		v, err := oidc.New(oidc.Config{Issuer: iss.URL, Audience: "console", JWKSFile: iss.WriteJWKS(t), Clock: c.Clock})
		require.NoError(t, err)
		c.IDTokens = v
	})
	e.workspace(t, "acme", 0, map[string]keystorev1.Role{"alice": keystorev1.Role_ROLE_ADMIN, "carol": keystorev1.Role_ROLE_MEMBER})
	_, err := e.client.UpdateWorkspace(e.root(t), &keystorev1.UpdateWorkspaceRequest{Workspace: "acme",
		Patch: &keystorev1.Workspace{LimitEditors: keystorev1.LimitEditors_LIMIT_EDITORS_ADMINS}, UpdateMask: paths("limit_editors")})
	require.NoError(t, err)
	carol := as(t.Context(), iss.Token("carol", e.clock.Now(), nil))
	k, _ := e.createKey(t, carol, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "carols"})
	for who, want := range map[string]codes.Code{"alice": codes.OK, "carol": codes.PermissionDenied} {
		_, err := e.client.UpdateKey(as(t.Context(), iss.Token(who, e.clock.Now(), nil)), &keystorev1.UpdateKeyRequest{
			Workspace: "acme", Key: k.GetId(), Patch: &keystorev1.Key{GlobalLimits: &typev1.Limits{Rpm: 1}}, UpdateMask: paths("global_limits")})
		requireCode(t, want, err)
	}
}
