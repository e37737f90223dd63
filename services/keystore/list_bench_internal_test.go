package keystore

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/pkg/keyformat"
)

var listKeys = flag.Int("keystore.listkeys", 10_000, "keys in the workspace of BenchmarkListKeys (e.g. 100000)")

// BenchmarkListKeys reads one page from the start, the middle and the end
// of a workspace of -keystore.listkeys keys; a page must not cost more with
// more keys.
func BenchmarkListKeys(b *testing.B) {
	c := etcdtest.Start(b)
	s, err := New(b.Context(), Config{Etcd: c.Client, RootToken: "0123456789abcdef"})
	if err != nil {
		b.Fatal(err)
	}
	n := *listKeys
	ctx := b.Context()
	seedKeys(b, c.Client, "acme", n)
	p := &principal{root: true, subject: rootSubject, credential: credRootToken}
	first, err := s.listKeys(ctx, p, &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: 50})
	if err != nil || len(first.GetKeys()) != 50 {
		b.Fatalf("list: %v (%d keys)", err, len(first.GetKeys()))
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.listKeys(ctx, p, &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: 50, PageToken: first.GetNextPageToken()}); err != nil {
			b.Fatal(err)
		}
	}
}

// seedKeys writes a workspace of n keys straight into etcd, 40 keys (120
// ops) per transaction, and returns their ids.
func seedKeys(tb testing.TB, cli *clientv3.Client, ws string, n int) []string {
	tb.Helper()
	ctx := tb.Context()
	w := &keystorev1.Workspace{Id: ws, MaxKeys: int32(n + 10), CreateTime: timestamppb.Now()}
	wv, _ := marshal(w)
	if _, err := cli.Put(ctx, workspaceKey(ws), wv); err != nil {
		tb.Fatal(err)
	}
	ids := make([]string, 0, n)
	var ops []clientv3.Op
	for i := range n {
		id := keyformat.NewID()
		ids = append(ids, id)
		text, fk := keyformat.New(keyformat.Standard, id)
		v, err := encodeKey(&storedKey{hash: fk.Hash(), key: &keystorev1.Key{
			Id: id, Workspace: ws, Name: fmt.Sprint("k", i), Kind: keystorev1.KeyKind_KEY_KIND_STANDARD,
			Owner: "root", Enabled: i%3 != 0, PartialKey: keyformat.Partial(text), CreateTime: timestamppb.Now(),
		}})
		if err != nil {
			tb.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(keyKey(ws, id), v), clientv3.OpPut(idKey(id), ws),
			clientv3.OpPut(nameKey(ws, fmt.Sprint("k", i)), id))
		if len(ops) >= 120 || i == n-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				tb.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	if _, err := cli.Put(ctx, countKey(ws), strconv.Itoa(n)); err != nil {
		tb.Fatal(err)
	}
	return ids
}

func TestBucketEnd(t *testing.T) {
	const pfx, end = "p/", "p0"
	cases := []struct {
		from  string
		depth int
		want  string
	}{
		{"p/", 0, end},
		{"p/", 1, "p/1"},
		{"p/", 2, "p/01"},
		{"p/abc", 1, "p/b"},
		{"p/abc", 2, "p/ac"},
		{"p/azc", 2, "p/b"},
		{"p/zzc", 2, end},
		{"p/b", 2, "p/b1"},
		{"p/k9\x00", 2, "p/ka"},
	}
	for _, c := range cases {
		t.Run(c.from, func(t *testing.T) { require.Equal(t, c.want, bucketEnd(pfx, c.from, c.depth, end)) })
	}
}

// TestListKeysBuckets pages through a workspace large enough to be read in
// id buckets and finds every key exactly once, with and without filters.
func TestListKeysBuckets(t *testing.T) {
	c := etcdtest.Start(t)
	s, err := New(t.Context(), Config{Etcd: c.Client, RootToken: "0123456789abcdef"})
	require.NoError(t, err)
	ids := seedKeys(t, c.Client, "acme", 400)
	require.Equal(t, 1, bucketDepth(400, 2))
	p := &principal{root: true, subject: rootSubject, credential: credRootToken}
	for _, state := range []keystorev1.KeyState{0, keystorev1.KeyState_KEY_STATE_DISABLED} {
		t.Run(state.String(), func(t *testing.T) {
			var got []string
			tok := ""
			for {
				page, err := s.listKeys(t.Context(), p, &keystorev1.ListKeysRequest{Workspace: "acme", PageSize: 2, PageToken: tok, State: state})
				require.NoError(t, err)
				for _, k := range page.GetKeys() {
					got = append(got, k.GetId())
				}
				if tok = page.GetNextPageToken(); tok == "" {
					break
				}
			}
			want := 400
			if state != 0 {
				want = 134
			}
			require.Len(t, got, want)
			require.True(t, slices.IsSorted(got))
			require.Len(t, slices.Compact(slices.Clone(got)), want, "no duplicates")
			require.Subset(t, ids, got)
		})
	}
}
