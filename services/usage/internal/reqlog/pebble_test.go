package reqlog

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pebT0 starts a slice: 12:00 UTC is a multiple of BucketWidth.
var pebT0 = time.Date(2026, 3, 11, 12, 0, 0, 0, time.UTC)

// openPebbleTest opens a store in a fresh directory, closed at the end of the
// test.
// BucketWidth is the slice width these tests use (production uses
// SliceWidth): several entries a slice, minutes apart.
const BucketWidth = 10 * time.Minute

func openPebbleTest(t *testing.T, maxBytes int64) *Pebble {
	t.Helper()
	p, err := openPebble(t.TempDir(), maxBytes, nil, BucketWidth)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// mk is an entry of workspace acme whose record names its identity.
func pebEntry(producer string, seq uint64, at time.Time, key, owner, model string, status int32) Entry {
	return Entry{
		Workspace: "acme", Key: key, Owner: owner, Model: model, Status: status, At: at,
		Producer: producer, Seq: seq, Record: []byte(fmt.Sprintf("%s/%d", producer, seq)),
	}
}

func pebID(e Entry) string { return fmt.Sprintf("%s/%d", e.Producer, e.Seq) }

func pebIDs(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = pebID(e)
	}
	return out
}

// pebNewestFirst orders entries as a listing does: by time, then producer,
// then sequence, descending. (Producers here are of one length, so that
// their byte order with a length prefix is their string order.)
func pebNewestFirst(a, b Entry) int {
	if c := b.At.Compare(a.At); c != 0 {
		return c
	}
	if c := cmp.Compare(b.Producer, a.Producer); c != 0 {
		return c
	}
	return cmp.Compare(b.Seq, a.Seq)
}

// pebListAll pages through q, each page token passing through EncodeCursor
// and DecodeCursor as ListRequests does. Every page but the last is full.
func pebListAll(t *testing.T, p *Pebble, q Query) []Entry {
	t.Helper()
	var out []Entry
	for range 10_000 {
		page, err := p.List(t.Context(), q)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Entries), q.Limit)
		out = append(out, page.Entries...)
		if page.Next == nil {
			return out
		}
		require.Len(t, page.Entries, q.Limit, "a short page before the end")
		q.Before, err = DecodeCursor(q.Workspace, EncodeCursor(q.Workspace, *page.Next))
		require.NoError(t, err)
	}
	t.Fatal("the listing did not end")
	return nil
}

func TestPebbleAppendIdempotent(t *testing.T) {
	p := openPebbleTest(t, 0)
	e := pebEntry("edge-1", 7, pebT0.Add(90*time.Second), "k1", "alice", "small", 1)
	require.NoError(t, p.Append(t.Context(), []Entry{e, e}))
	require.NoError(t, p.Append(t.Context(), []Entry{e}))
	require.NoError(t, p.Append(t.Context(), nil))
	for _, q := range []Query{{}, {Key: "k1"}, {Owner: "alice"}, {Model: "small"}, {Status: 1}} {
		q.Workspace, q.Limit = "acme", 10
		page, err := p.List(t.Context(), q)
		require.NoError(t, err)
		require.Equal(t, []Entry{e}, page.Entries, "query %+v", q)
		require.Nil(t, page.Next)
	}
}

func TestPebbleList(t *testing.T) {
	p := openPebbleTest(t, 0)
	// 60 entries of acme over 10 slices, two at each time (producers p1
	// and p2, so that ties are ordered by producer), plus lookalikes in
	// other workspaces that no acme listing may show.
	var all, others []Entry
	for i := range 60 {
		at := pebT0.Add(time.Duration(i/2) * 200 * time.Second)
		status := int32(1)
		if i%5 == 0 {
			status = 2
		}
		e := pebEntry(fmt.Sprintf("p%d", 1+i%2), uint64(100+i), at, fmt.Sprintf("k%d", i%3), fmt.Sprintf("o%d", i%4), []string{"small", "large"}[i/30], status)
		all = append(all, e)
		for _, ws := range []string{"acm", "acme2", "beta"} {
			o := e
			o.Workspace = ws
			others = append(others, o)
		}
	}
	require.Equal(t, p.bucketOf(pebT0)+9, p.bucketOf(all[59].At), "10 slices")
	// Appended in two batches out of order: the order is the store's.
	require.NoError(t, p.Append(t.Context(), append(slices.Clone(all[30:]), others...)))
	require.NoError(t, p.Append(t.Context(), all[:30]))
	want := func(q Query) []string {
		var out []Entry
		for _, e := range all {
			if q.matches(&e) {
				out = append(out, e)
			}
		}
		slices.SortFunc(out, pebNewestFirst)
		return pebIDs(out)
	}

	tests := []struct {
		name string
		q    Query
	}{
		{"everything", Query{}},
		{"by key", Query{Key: "k1"}},
		{"by owner", Query{Owner: "o2"}},
		{"by model", Query{Model: "large"}},
		{"by status", Query{Status: 2}},
		{"by key and status", Query{Key: "k0", Status: 2}},
		{"by owner and model", Query{Owner: "o3", Model: "small"}},
		{"by key, owner and model", Query{Key: "k2", Owner: "o1", Model: "small"}},
		{"no such key", Query{Key: "k9"}},
		{"contradictory filters", Query{Key: "k0", Owner: "o1", Model: "large", Status: 1}},
	}
	for _, tc := range tests {
		for _, limit := range []int{1, 3, 7, 100} {
			t.Run(fmt.Sprintf("%s/pages of %d", tc.name, limit), func(t *testing.T) {
				q := tc.q
				q.Workspace, q.Limit = "acme", limit
				got := pebListAll(t, p, q)
				require.Equal(t, want(q), pebIDs(got))
				for _, e := range got {
					require.Equal(t, "acme", e.Workspace)
					require.Equal(t, pebID(e), string(e.Record))
				}
			})
		}
	}

	t.Run("entries come back whole", func(t *testing.T) {
		page, err := p.List(t.Context(), Query{Workspace: "acme", Key: "k2", Limit: 1})
		require.NoError(t, err)
		require.Len(t, page.Entries, 1)
		src := all[slices.IndexFunc(all, func(e Entry) bool { return pebID(e) == pebID(page.Entries[0]) })]
		require.Equal(t, src, page.Entries[0])
	})
	t.Run("a cursor between slices", func(t *testing.T) {
		// At the start of the fifth slice: everything before it, the entries
		// at that very time excluded (they sort after a cursor without
		// producer).
		c := Cursor{At: pebT0.Add(40 * time.Minute)}
		page, err := p.List(t.Context(), Query{Workspace: "acme", Limit: 100, Before: &c})
		require.NoError(t, err)
		var w []Entry
		for _, e := range all {
			if e.At.Before(c.At) {
				w = append(w, e)
			}
		}
		slices.SortFunc(w, pebNewestFirst)
		require.Equal(t, pebIDs(w), pebIDs(page.Entries))
	})
}

func TestCursorEncoding(t *testing.T) {
	c := Cursor{At: pebT0.Add(123 * time.Nanosecond), Producer: "edge-1", Seq: 1<<63 + 5}
	tok := EncodeCursor("acme", c)
	got, err := DecodeCursor("acme", tok)
	require.NoError(t, err)
	require.Equal(t, c, *got)

	raw, err := base64.RawURLEncoding.DecodeString(tok)
	require.NoError(t, err)
	enc := base64.RawURLEncoding.EncodeToString
	tests := []struct {
		name, ws, tok string
	}{
		{"another workspace", "beta", tok},
		{"a workspace it starts with", "acm", tok},
		{"empty", "acme", ""},
		{"not base64", "acme", "!!!"},
		{"padded base64", "acme", base64.URLEncoding.EncodeToString(raw)},
		{"too short", "acme", enc(raw[:len(raw)-1])},
		{"too long", "acme", enc(append(slices.Clone(raw), 0))},
		{"just the workspace", "acme", enc(raw[:5])},
		{"a time before 1970", "acme", EncodeCursor("acme", Cursor{At: time.Unix(-1, 0), Producer: "p"})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeCursor(tc.ws, tc.tok)
			require.ErrorIs(t, err, ErrBadCursor)
		})
	}
}

// TestPebbleMaxScan: a selective filter that no index serves answers a short
// page with a cursor once MaxScan entries are examined, and the listing
// goes on from there.
func TestPebbleMaxScan(t *testing.T) {
	p := openPebbleTest(t, 0)
	var es []Entry
	// Three old entries with status 2, then MaxScan+500 newer with status 1.
	for i := range 3 + MaxScan + 500 {
		status := int32(1)
		if i < 3 {
			status = 2
		}
		es = append(es, pebEntry("p1", uint64(i+1), pebT0.Add(time.Duration(i)*time.Millisecond), "k1", "o1", "small", status))
	}
	require.NoError(t, p.Append(t.Context(), es))

	q := Query{Workspace: "acme", Status: 2, Limit: 10}
	first, err := p.List(t.Context(), q)
	require.NoError(t, err)
	require.Empty(t, first.Entries)
	require.NotNil(t, first.Next, "a short page says where to go on")
	// The cursor is the last entry examined: the MaxScan-th newest.
	require.Equal(t, es[len(es)-MaxScan].cursor(), *first.Next)

	q.Before = first.Next
	second, err := p.List(t.Context(), q)
	require.NoError(t, err)
	require.Equal(t, []string{"p1/3", "p1/2", "p1/1"}, pebIDs(second.Entries))
	require.Nil(t, second.Next)

	t.Run("through an index", func(t *testing.T) {
		q := Query{Workspace: "acme", Key: "k1", Status: 2, Limit: 10}
		require.Equal(t, []string{"p1/3", "p1/2", "p1/1"}, pebIDs(pebListShort(t, p, q)))
	})
}

// pebListShort pages through q, short pages allowed.
func pebListShort(t *testing.T, p *Pebble, q Query) []Entry {
	t.Helper()
	var out []Entry
	for range 100 {
		page, err := p.List(t.Context(), q)
		require.NoError(t, err)
		out = append(out, page.Entries...)
		if page.Next == nil {
			return out
		}
		q.Before = page.Next
	}
	t.Fatal("the listing did not end")
	return nil
}

// pebSixSlices appends two entries to each of six slices from pebT0 and returns
// them.
func pebSixSlices(t *testing.T, p *Pebble) []Entry {
	t.Helper()
	var es []Entry
	for s := range 6 {
		for j := range 2 {
			at := pebT0.Add(time.Duration(s)*BucketWidth + time.Duration(1+j*8)*time.Minute)
			es = append(es, pebEntry("p1", uint64(2*s+j+1), at, "k1", "o1", "small", 1))
		}
	}
	require.NoError(t, p.Append(t.Context(), es))
	return es
}

func TestPebbleTrim(t *testing.T) {
	p := openPebbleTest(t, 0)
	pebSixSlices(t, p)
	steps := []struct {
		name    string
		cutoff  time.Time
		dropped int
		left    int
	}{
		{"a cutoff inside the first slice keeps it", pebT0.Add(5 * time.Minute), 0, 12},
		{"slices ending at the cutoff go", pebT0.Add(20 * time.Minute), 2, 8},
		{"again, nothing more", pebT0.Add(20 * time.Minute), 0, 8},
		{"slices ending before the cutoff go", pebT0.Add(59 * time.Minute), 3, 2},
		{"the last one", pebT0.Add(60 * time.Minute), 1, 0},
		{"an empty store", pebT0.Add(time.Hour), 0, 0},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			n, err := p.Trim(t.Context(), st.cutoff)
			require.NoError(t, err)
			require.Equal(t, st.dropped, n)
			got := pebListAll(t, p, Query{Workspace: "acme", Limit: 100})
			require.Len(t, got, st.left)
			for _, e := range got {
				require.False(t, e.At.Before(st.cutoff.Add(-BucketWidth)), "%s at %s", pebID(e), e.At)
			}
			// Indexes go with their entries.
			require.Len(t, pebListAll(t, p, Query{Workspace: "acme", Key: "k1", Limit: 100}), st.left)
		})
	}
}

// TestPebbleTrimBySize: over its size bound the store drops its oldest slice,
// one a call, and never the newest.
func TestPebbleTrimBySize(t *testing.T) {
	p := openPebbleTest(t, 1)
	es := pebSixSlices(t, p)
	epoch := time.Unix(0, 0)
	for i := range 5 {
		n, err := p.Trim(t.Context(), epoch)
		require.NoError(t, err)
		require.Equal(t, 1, n, "call %d", i)
		require.Len(t, pebListAll(t, p, Query{Workspace: "acme", Limit: 100}), 12-2*(i+1))
	}
	n, err := p.Trim(t.Context(), epoch)
	require.NoError(t, err)
	require.Zero(t, n, "the newest slice stays")
	got := pebListAll(t, p, Query{Workspace: "acme", Limit: 100})
	require.Equal(t, []string{pebID(es[11]), pebID(es[10])}, pebIDs(got))
}

// TestPebbleReopen: a reopened store finds its entries and the slices that hold
// them, so that listing and trimming go on as before.
func TestPebbleReopen(t *testing.T) {
	dir := t.TempDir()
	p, err := openPebble(dir, 0, nil, BucketWidth)
	require.NoError(t, err)
	require.Empty(t, p.buckets)
	es := pebSixSlices(t, p)
	before := pebListAll(t, p, Query{Workspace: "acme", Limit: 5})
	require.NoError(t, p.Close())

	p, err = openPebble(dir, 0, nil, BucketWidth)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	b0 := p.bucketOf(pebT0)
	require.Equal(t, []uint64{b0, b0 + 1, b0 + 2, b0 + 3, b0 + 4, b0 + 5}, p.buckets)
	require.Equal(t, before, pebListAll(t, p, Query{Workspace: "acme", Limit: 5}))
	require.Len(t, before, len(es))

	n, err := p.Trim(t.Context(), pebT0.Add(2*BucketWidth))
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Equal(t, []uint64{b0 + 2, b0 + 3, b0 + 4, b0 + 5}, p.buckets)
	require.Len(t, pebListAll(t, p, Query{Workspace: "acme", Limit: 5}), 8)
}

// FuzzDecodeCursor: any token decodes or is ErrBadCursor, without
// panicking; a decoded cursor encodes to a token that decodes to it.
func FuzzDecodeCursor(f *testing.F) {
	f.Add("acme", EncodeCursor("acme", Cursor{At: pebT0, Producer: "edge-1", Seq: 42}))
	f.Add("acme", EncodeCursor("beta", Cursor{}))
	f.Add("", EncodeCursor("", Cursor{At: time.Unix(0, 0), Seq: 1<<64 - 1}))
	f.Add("acme", "bm9wZQ")
	f.Add("acme", "_____________________w")
	f.Fuzz(func(t *testing.T, ws, tok string) {
		c, err := DecodeCursor(ws, tok)
		if err != nil {
			require.ErrorIs(t, err, ErrBadCursor)
			return
		}
		again, err := DecodeCursor(ws, EncodeCursor(ws, *c))
		require.NoError(t, err)
		require.Equal(t, *c, *again)
	})
}
