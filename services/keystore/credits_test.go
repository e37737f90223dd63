package keystore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/keystore"
)

// fixedSpend is a usage service that answers one credit spend.
type fixedSpend struct{ n atomic.Int64 }

func (f *fixedSpend) CreditSpent(context.Context, string) (money.Nanos, error) {
	return money.Nanos(f.n.Load()), nil
}

func withSpend(f keystore.CreditSpend) func(*keystore.Config) {
	return func(c *keystore.Config) { c.CreditSpend = f }
}

func topUp(id, amount string) *keystorev1.AddCreditEntryRequest {
	return &keystorev1.AddCreditEntryRequest{Workspace: "acme", Entry: &keystorev1.CreditEntry{
		Id: id, Kind: keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_TOP_UP, AmountUsd: amount,
	}}
}

func adjust(id, amount string) *keystorev1.AddCreditEntryRequest {
	r := topUp(id, amount)
	r.Entry.Kind = keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_ADJUSTMENT
	return r
}

func (e *env) credits(tb testing.TB, ctx context.Context) *keystorev1.GetCreditsResponse {
	tb.Helper()
	c, err := e.client.GetCredits(ctx, &keystorev1.GetCreditsRequest{Workspace: "acme"})
	require.NoError(tb, err)
	return c
}

func (e *env) entries(tb testing.TB, ctx context.Context) []*keystorev1.CreditEntry {
	tb.Helper()
	l, err := e.client.ListCreditEntries(ctx, &keystorev1.ListCreditEntriesRequest{Workspace: "acme", PageSize: 1000})
	require.NoError(tb, err)
	return l.GetEntries()
}

func TestCreditEntryIdempotent(t *testing.T) {
	spend := &fixedSpend{}
	e := newEnv(t, withSpend(spend))
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)

	c := e.credits(t, ctx)
	require.False(t, c.GetEnabled())
	require.Equal(t, []string{"0.00", "0.00", "0.00"}, []string{c.GetGrantedUsd(), c.GetSpentUsd(), c.GetBalanceUsd()})

	first, err := e.client.AddCreditEntry(ctx, topUp("invoice-2026-03:1", "10.5"))
	require.NoError(t, err)
	require.False(t, first.GetReplayed())
	require.Equal(t, "10.50", first.GetEntry().GetAmountUsd())
	require.Equal(t, "root", first.GetEntry().GetActor())

	again, err := e.client.AddCreditEntry(ctx, topUp("invoice-2026-03:1", "10.50"))
	require.NoError(t, err)
	require.True(t, again.GetReplayed())
	require.Equal(t, first.GetEntry().String(), again.GetEntry().String(), "the first entry is answered")

	_, err = e.client.AddCreditEntry(ctx, topUp("invoice-2026-03:1", "11"))
	requireCode(t, codes.AlreadyExists, err)
	_, err = e.client.AddCreditEntry(ctx, adjust("invoice-2026-03:1", "10.5"))
	requireCode(t, codes.AlreadyExists, err)

	require.Len(t, e.entries(t, ctx), 1)
	spend.n.Store(2_250_000_000)
	c = e.credits(t, ctx)
	require.True(t, c.GetEnabled())
	require.Equal(t, []string{"10.50", "2.25", "8.25"}, []string{c.GetGrantedUsd(), c.GetSpentUsd(), c.GetBalanceUsd()})

	w, err := e.client.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Equal(t, "10.50", w.GetWorkspace().GetCreditsGrantedUsd())

	// The workspace and its level marker change in one transaction, so
	// edges reload the workspace.
	resp, err := e.etcd.Client.Get(t.Context(), "/keygate/keystore/level/acme/w")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, w.GetWorkspace().GetEtag(), fmt.Sprint(resp.Kvs[0].ModRevision))

	ev, err := e.client.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: "acme"})
	require.NoError(t, err)
	n := 0
	for _, a := range ev.GetEvents() {
		if a.GetAction() == "credits.add" {
			n++
		}
	}
	require.Equal(t, 1, n, "one audit event for one entry")
}

func TestCreditEntryInvalid(t *testing.T) {
	e := newEnv(t, withSpend(&fixedSpend{}))
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	_, err := e.client.AddCreditEntry(ctx, topUp("seed", "5"))
	require.NoError(t, err)

	long := strings.Repeat("x", 129)
	for name, req := range map[string]*keystorev1.AddCreditEntryRequest{
		"no id":                 topUp("", "5"),
		"id with a space":       topUp("a b", "5"),
		"id with a slash":       topUp("a/b", "5"),
		"id too long":           topUp(long, "5"),
		"empty amount":          topUp("x1", ""),
		"not a number":          topUp("x2", "five"),
		"exponent":              topUp("x3", "1e3"),
		"plus sign":             topUp("x4", "+5"),
		"seven decimals":        topUp("x5", "0.0000001"),
		"space":                 topUp("x6", " 5"),
		"negative top-up":       topUp("x7", "-5"),
		"zero top-up":           topUp("x8", "0"),
		"zero adjustment":       adjust("x9", "-0.00"),
		"too large":             topUp("x10", "2000000000"),
		"no kind":               {Workspace: "acme", Entry: &keystorev1.CreditEntry{Id: "x11", AmountUsd: "5"}},
		"unknown kind":          {Workspace: "acme", Entry: &keystorev1.CreditEntry{Id: "x12", AmountUsd: "5", Kind: 9}},
		"note too long":         {Workspace: "acme", Entry: &keystorev1.CreditEntry{Id: "x13", AmountUsd: "5", Kind: keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_TOP_UP, Note: strings.Repeat("n", 513)}},
		"float-looking garbage": topUp("x14", "5.5.5"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.client.AddCreditEntry(ctx, req)
			requireCode(t, codes.InvalidArgument, err)
		})
	}
	_, err = e.client.AddCreditEntry(ctx, adjust("too-much", "-5.000001"))
	requireCode(t, codes.FailedPrecondition, err)

	require.Len(t, e.entries(t, ctx), 1, "nothing recorded")
	require.Equal(t, "5.00", e.credits(t, ctx).GetGrantedUsd(), "nothing counted")
}

// TestCreditBalanceExact: many small top-ups, sent at once (each retries
// its compare-and-swap), sum exactly; no float.
func TestCreditBalanceExact(t *testing.T) {
	spend := &fixedSpend{}
	spend.n.Store(3_300_000_001)
	// Concurrent writers retry their compare-and-swap; under -race on a
	// shared machine that may outlast the default 2 s storage timeout.
	e := newEnv(t, withSpend(spend), func(c *keystore.Config) { c.StorageTimeout = 20 * time.Second })
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)

	const workers, each, n = 4, 50, 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				_, err := e.client.AddCreditEntry(ctx, topUp(fmt.Sprintf("t%d-%d", w, i), "0.1"))
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	_, err := e.client.AddCreditEntry(ctx, adjust("fix", "-0.000001"))
	require.NoError(t, err)
	c := e.credits(t, ctx)
	require.Equal(t, "19.999999", c.GetGrantedUsd())
	require.Equal(t, "3.300000001", c.GetSpentUsd())
	require.Equal(t, "16.699998999", c.GetBalanceUsd())
	require.Len(t, e.entries(t, ctx), n+1)
}

func TestCreditEntriesPages(t *testing.T) {
	e := newEnv(t, withSpend(&fixedSpend{}))
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	for i := range 7 {
		e.clock.Advance(1)
		_, err := e.client.AddCreditEntry(ctx, topUp(fmt.Sprintf("e%d", i), "1"))
		require.NoError(t, err)
	}
	var got []string
	tok := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 3)
		l, err := e.client.ListCreditEntries(ctx, &keystorev1.ListCreditEntriesRequest{Workspace: "acme", PageSize: 3, PageToken: tok})
		require.NoError(t, err)
		for _, en := range l.GetEntries() {
			got = append(got, en.GetId())
		}
		if tok = l.GetNextPageToken(); tok == "" {
			break
		}
	}
	require.Equal(t, []string{"e6", "e5", "e4", "e3", "e2", "e1", "e0"}, got, "newest first, each once")
	_, err := e.client.ListCreditEntries(ctx, &keystorev1.ListCreditEntriesRequest{Workspace: "acme", PageToken: "bogus"})
	requireCode(t, codes.InvalidArgument, err)
}

func TestCreditRights(t *testing.T) {
	e := newEnv(t)
	keys := e.workspace(t, "acme", 0, map[string]keystorev1.Role{
		"olga": keystorev1.Role_ROLE_OWNER, "adam": keystorev1.Role_ROLE_ADMIN, "mia": keystorev1.Role_ROLE_MEMBER,
	})
	other := e.workspace(t, "other", 0, map[string]keystorev1.Role{"oscar": keystorev1.Role_ROLE_OWNER})
	bg := t.Context()

	_, err := e.client.AddCreditEntry(as(bg, keys["olga"]), topUp("o1", "5"))
	require.NoError(t, err)
	_, err = e.client.AddCreditEntry(as(bg, keys["adam"]), topUp("a1", "5"))
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.AddCreditEntry(as(bg, keys["mia"]), topUp("m1", "5"))
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.AddCreditEntry(as(bg, other["oscar"]), topUp("x1", "5"))
	requireCode(t, codes.NotFound, err)

	_, err = e.client.ListCreditEntries(as(bg, keys["mia"]), &keystorev1.ListCreditEntriesRequest{Workspace: "acme"})
	requireCode(t, codes.PermissionDenied, err)
	require.Len(t, e.entries(t, as(bg, keys["adam"])), 1)

	// No usage service configured: the balance of a workspace holding
	// credits cannot be told.
	_, err = e.client.GetCredits(as(bg, keys["mia"]), &keystorev1.GetCreditsRequest{Workspace: "acme"})
	requireCode(t, codes.FailedPrecondition, err)
}

// TestCreditEntryRace: the same entry sent many times at once is counted
// once.
func TestCreditEntryRace(t *testing.T) {
	e := newEnv(t, withSpend(&fixedSpend{}))
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	var wg sync.WaitGroup
	var replayed atomic.Int32
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.client.AddCreditEntry(ctx, topUp("same", "7"))
			if err == nil && r.GetReplayed() {
				replayed.Add(1)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int32(9), replayed.Load())
	require.Equal(t, "7.00", e.credits(t, ctx).GetGrantedUsd())
	resp, err := e.etcd.Client.Get(t.Context(), "/keygate/keystore/credit/acme/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Equal(t, int64(1), resp.Count)
}
