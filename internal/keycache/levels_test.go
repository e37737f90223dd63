package keycache

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/limitpolicy"
)

// inLevels makes a key of member in workspace ws, answered with both.
func inLevels(ws, member string) func(*keystorev1.VerifyKeyResponse) {
	return func(r *keystorev1.VerifyKeyResponse) {
		r.Key.Workspace, r.Key.Owner = ws, member
		r.Workspace = &keystorev1.Workspace{Id: ws, Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 10}}}
		r.Member = &keystorev1.Member{Workspace: ws, Member: member, Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 5}}}
	}
}

func TestVerifyCarriesLevels(t *testing.T) {
	t.Parallel()
	fx := start(t)
	_, secret := fx.key(t, inLevels("acme", "alice"))
	got, err := fx.v.Verify(t.Context(), secret)
	require.NoError(t, err)
	require.Equal(t, "acme", got.Levels.Workspace.GetId())
	require.Equal(t, "alice", got.Levels.Member.GetMember())

	// Levels that do not govern the key are not applied to it.
	_, stray := fx.key(t, func(r *keystorev1.VerifyKeyResponse) {
		inLevels("acme", "alice")(r)
		r.Key.Workspace, r.Key.Owner = "other", "bob"
	})
	got, err = fx.v.Verify(t.Context(), stray)
	require.NoError(t, err)
	require.Nil(t, got.Levels.Workspace)
	require.Nil(t, got.Levels.Member)
}

func TestLevelChangesDropEntries(t *testing.T) {
	t.Parallel()
	fx := start(t)
	_, alice1 := fx.key(t, inLevels("acme", "alice"))
	_, alice2 := fx.key(t, inLevels("acme", "alice"))
	_, bob := fx.key(t, inLevels("acme", "bob"))
	_, elsewhere := fx.key(t, inLevels("globex", "alice"))
	all := []string{alice1, alice2, bob, elsewhere}
	verifyAll := func(t *testing.T) {
		for _, s := range all {
			fx.verifyOK(t, s)
		}
		require.Equal(t, len(all), fx.v.Len())
	}
	verifyAll(t)

	// A member's change drops the keys it owns in that workspace.
	rev := fx.ks.changeLevel("acme", "alice")
	require.Eventually(t, func() bool { return fx.v.Len() == 2 }, 5*time.Second, time.Millisecond)
	require.Equal(t, rev-1, fx.revision(), "resumes before the change's revision")
	fx.fromCache(t, bob)
	fx.fromCache(t, elsewhere)

	// A workspace's change drops every key of it.
	verifyAll(t)
	fx.ks.changeLevel("acme", "")
	require.Eventually(t, func() bool { return fx.v.Len() == 1 }, 5*time.Second, time.Millisecond)
	fx.fromCache(t, elsewhere)
	before := fx.ks.calls.Load()
	fx.verifyOK(t, alice1)
	require.Equal(t, before+1, fx.ks.calls.Load(), "asked again after the change")
}

// TestUnknownLegacyOneLookup: an imported-style token the keystore does not
// know reaches it once per TTL, however often it is sent; one it knows is
// verified and cached like a keygate key.
func TestUnknownLegacyOneLookup(t *testing.T) {
	t.Parallel()
	for _, notFound := range []bool{false, true} {
		t.Run(map[bool]string{false: "unauthenticated", true: "not found"}[notFound], func(t *testing.T) {
			t.Parallel()
			fx := start(t, func(o *Options) { o.UnknownTTL = 30 * time.Second })
			fx.ks.notFound.Store(notFound)
			token := "sk-proj-" + strings.Repeat("Zq3", 30)
			for range 20 {
				_, err := fx.v.Verify(t.Context(), token)
				require.ErrorIs(t, err, ErrInvalidKey)
			}
			require.EqualValues(t, 1, fx.ks.calls.Load(), "one lookup within the TTL")

			fx.clock.Advance(29 * time.Second)
			_, err := fx.v.Verify(t.Context(), token)
			require.ErrorIs(t, err, ErrInvalidKey)
			require.EqualValues(t, 1, fx.ks.calls.Load())

			fx.clock.Advance(time.Second)
			_, err = fx.v.Verify(t.Context(), token)
			require.ErrorIs(t, err, ErrInvalidKey)
			require.EqualValues(t, 2, fx.ks.calls.Load(), "asked again once the TTL passed")

			// Text that is no kind of key is never looked up.
			for _, bad := range []string{"short", "has space in the middle", strings.Repeat("x", 300), "kg_" + strings.Repeat("x", 40)} {
				_, err := fx.v.Verify(t.Context(), bad)
				require.ErrorIs(t, err, ErrInvalidKey)
			}
			require.EqualValues(t, 2, fx.ks.calls.Load())

			// A known imported key verifies, then answers from the cache.
			known := "sk-ant-" + strings.Repeat("k", 40)
			fx.ks.set(known, &keystorev1.VerifyKeyResponse{Key: &keystorev1.Key{Id: "legacy1", Legacy: true, Enabled: true}})
			fx.verifyOK(t, known)
			fx.fromCache(t, known)
			require.EqualValues(t, 3, fx.ks.calls.Load())
		})
	}
}

func TestUnknownIsBounded(t *testing.T) {
	t.Parallel()
	u := newUnknown(int64(time.Minute), 4)
	var hs []digest
	for i := range 10 {
		var h digest
		h[0] = byte(i)
		hs = append(hs, h)
		u.add(h, int64(i))
		require.LessOrEqual(t, u.len(), 4)
	}
	require.True(t, u.has(hs[9], 10), "the newest is kept")
	require.False(t, u.has(hs[0], 10), "the oldest went first")
	// Expired entries are swept before live ones are evicted.
	u = newUnknown(10, 2)
	u.add(hs[0], 0)
	u.add(hs[1], 5)
	u.add(hs[2], 12) // hs[0] expired at 10
	require.True(t, u.has(hs[1], 12))
	require.True(t, u.has(hs[2], 12))
}

// TestItemTemplates: a model's Check item is built once per entry, and
// rebuilt when an override it applied expires, reverting to the base
// limits with nothing to undo.
func TestItemTemplates(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ws := &keystorev1.Workspace{Id: "acme",
		Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 10}},
		LimitOverride: &typev1.Override{ExpireTime: timestamppb.New(now.Add(time.Hour)),
			Policy: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 100}}}}
	v := &Verified{Levels: limitpolicy.Levels{Key: &keystorev1.Key{Id: "k", Workspace: "acme", Owner: "alice"}, Workspace: ws}}
	a, err := v.Item("m1", now)
	require.NoError(t, err)
	b, err := v.Item("m1", now.Add(time.Minute))
	require.NoError(t, err)
	require.Same(t, a, b, "built once")
	require.EqualValues(t, 100, a.GetLevels()[0].GetPolicy().GetGlobalLimits().GetRpm(), "override in force")
	other, err := v.Item("m2", now)
	require.NoError(t, err)
	require.NotSame(t, a, other)

	after, err := v.Item("m1", now.Add(time.Hour))
	require.NoError(t, err)
	require.NotSame(t, a, after)
	require.EqualValues(t, 10, after.GetLevels()[0].GetPolicy().GetGlobalLimits().GetRpm(), "reverted at expiry")
	again, err := v.Item("m1", now.Add(2*time.Hour))
	require.NoError(t, err)
	require.Same(t, after, again, "nothing left to expire")

	allocs := testing.AllocsPerRun(100, func() { _, _ = v.Item("m1", now.Add(2*time.Hour)) })
	require.Zero(t, allocs)
}
