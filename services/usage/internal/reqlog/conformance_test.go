package reqlog

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// confStore is what the conformance suite asks of a request log store.
type confStore interface {
	Append(ctx context.Context, es []Entry) error
	List(ctx context.Context, q Query) (Page, error)
	Trim(ctx context.Context, cutoff time.Time) (int, error)
	Cap(ctx context.Context, ws string, keep int) (int, error)
	Close() error
}

// confBackend makes fresh, empty storage for one test and returns how to
// open it; opening it again after a close finds what was written.
type confBackend func(t *testing.T) (open func(t *testing.T) confStore)

// TestConformancePebble runs the shared suite against the embedded store.
func TestConformancePebble(t *testing.T) {
	runConformance(t, func(t *testing.T) func(*testing.T) confStore {
		dir := t.TempDir()
		return func(t *testing.T) confStore {
			p, err := OpenPebble(dir, 0, nil)
			require.NoError(t, err)
			return confClosing(t, p)
		}
	})
}

// TestConformancePostgres runs the shared suite against PostgreSQL, one
// database per test on one server.
func TestConformancePostgres(t *testing.T) {
	srv := startPostgres(t)
	runConformance(t, func(t *testing.T) func(*testing.T) confStore {
		url := srv.newDatabase(t)
		return func(t *testing.T) confStore {
			p, err := OpenPostgres(t.Context(), url, nil)
			require.NoError(t, err)
			return confClosing(t, p)
		}
	})
}

// onceCloser closes its store once, whether the test does or its cleanup.
type onceCloser struct {
	confStore
	once sync.Once
	err  error
}

func (c *onceCloser) Close() error {
	c.once.Do(func() { c.err = c.confStore.Close() })
	return c.err
}

func confClosing(t *testing.T, s confStore) confStore {
	c := &onceCloser{confStore: s}
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	return c
}

// confBase is a fixed midnight (UTC) the suite's entries are around.
var confBase = time.Date(2030, 3, 10, 0, 0, 0, 0, time.UTC)

// confData is a few days of entries of two workspaces: every filter value
// in several days, entries on and next to midnight, and entries at the same
// nanosecond told apart by producer and sequence (uint64 extremes included).
func confData() []Entry {
	var es []Entry
	for i := range 240 {
		ws := "ws-a"
		if i%5 == 4 {
			ws = "ws-b"
		}
		es = append(es, Entry{
			Workspace: ws,
			Key:       fmt.Sprintf("k%d", i%4),
			Owner:     fmt.Sprintf("o%d", i%3),
			Model:     fmt.Sprintf("m%d", i%5),
			Status:    []int32{200, 429, 500}[i%7%3],
			At:        confBase.Add(time.Duration(i)*23*time.Minute + time.Duration(i%7)),
			Producer:  []string{"p1", "p2"}[i%2],
			Seq:       uint64(i),
			Record:    fmt.Appendf(nil, "record %d", i),
		})
	}
	tie := confBase.Add(36*time.Hour + 17)
	for j, seq := range []uint64{0, 1, math.MaxInt64, math.MaxInt64 + 1, math.MaxUint64} {
		for _, prod := range []string{"p1", "p2"} {
			es = append(es, Entry{
				Workspace: "ws-a", Key: "k1", Owner: "o1", Model: "m1", Status: []int32{200, 500}[j%2],
				At: tie, Producer: prod, Seq: seq, Record: fmt.Appendf(nil, "tie %s %d", prod, seq),
			})
		}
	}
	for _, at := range []time.Time{confBase.Add(24*time.Hour - 1), confBase.Add(24 * time.Hour), confBase.Add(48 * time.Hour)} {
		es = append(es, Entry{
			Workspace: "ws-a", Key: "k2", Owner: "o0", Model: "m3", Status: 200,
			At: at, Producer: "p3", Seq: uint64(at.UnixNano()), Record: []byte("midnight"),
		})
	}
	return es
}

// confWant is what a listing of q over es must answer, all pages together.
func confWant(es []Entry, q Query) []Entry {
	var out []Entry
	for _, e := range es {
		if e.Workspace == q.Workspace && q.matches(&e) && (q.Before == nil || e.cursor().less(*q.Before)) {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		if a.cursor().less(b.cursor()) {
			return 1
		}
		if b.cursor().less(a.cursor()) {
			return -1
		}
		return 0
	})
	return slices.CompactFunc(out, func(a, b Entry) bool { return a.cursor() == b.cursor() })
}

// confListAll reads every page of q, checking each page's bounds and
// passing the cursor on as a page token, as the service does.
func confListAll(t *testing.T, s interface {
	List(ctx context.Context, q Query) (Page, error)
}, q Query) []Entry {
	t.Helper()
	got, _ := confListPages(t, s, q)
	return got
}

func confListPages(t *testing.T, s interface {
	List(ctx context.Context, q Query) (Page, error)
}, q Query) ([]Entry, int) {
	t.Helper()
	var got []Entry
	for pages := 1; ; pages++ {
		require.Less(t, pages, 100_000, "listing does not end")
		page, err := s.List(t.Context(), q)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Entries), q.Limit)
		got = append(got, page.Entries...)
		if page.Next == nil {
			return got, pages
		}
		c, err := DecodeCursor(q.Workspace, EncodeCursor(q.Workspace, *page.Next))
		require.NoError(t, err)
		require.Equal(t, *page.Next, *c)
		if q.Before != nil {
			require.True(t, c.less(*q.Before), "cursor %+v does not move past %+v", c, q.Before)
		}
		q.Before = c
	}
}

func runConformance(t *testing.T, backend confBackend) {
	t.Run("append is idempotent", func(t *testing.T) {
		s := backend(t)(t)
		es := confData()[:50]
		require.NoError(t, s.Append(t.Context(), append(slices.Clone(es[:30]), es[:10]...)))
		require.NoError(t, s.Append(t.Context(), es[20:]))
		require.NoError(t, s.Append(t.Context(), es))
		require.NoError(t, s.Append(t.Context(), nil))
		for _, ws := range []string{"ws-a", "ws-b"} {
			q := Query{Workspace: ws, Limit: 1000}
			require.Equal(t, confWant(es, q), confListAll(t, s, q))
		}
	})

	t.Run("lists newest first by every filter, in pages", func(t *testing.T) {
		s := backend(t)(t)
		es := confData()
		for i := 0; i < len(es); i += 64 {
			require.NoError(t, s.Append(t.Context(), es[i:min(i+64, len(es))]))
		}
		for _, q := range []Query{
			{Workspace: "ws-a"},
			{Workspace: "ws-b"},
			{Workspace: "ws-none"},
			{Workspace: "ws-a", Key: "k1"},
			{Workspace: "ws-a", Owner: "o2"},
			{Workspace: "ws-a", Model: "m3"},
			{Workspace: "ws-a", Status: 429},
			{Workspace: "ws-a", Key: "k2", Model: "m3"},
			{Workspace: "ws-a", Owner: "o0", Status: 200},
			{Workspace: "ws-a", Key: "k1", Owner: "o1", Model: "m1", Status: 500},
			{Workspace: "ws-b", Model: "m4", Status: 200},
			{Workspace: "ws-a", Key: "none"},
			{Workspace: "ws-a", Before: &Cursor{At: confBase.Add(36*time.Hour + 17), Producer: "p2", Seq: math.MaxInt64 + 1}},
			{Workspace: "ws-a", Key: "k1", Before: &Cursor{At: confBase.Add(24 * time.Hour)}},
		} {
			want := confWant(es, q)
			for _, limit := range []int{1, 7, 1000} {
				q.Limit = limit
				got, pages := confListPages(t, s, q)
				require.Equal(t, want, got, "%+v", q)
				if limit >= len(want) {
					require.Equal(t, 1, pages, "%+v", q)
				}
			}
		}
		// Ties at one nanosecond are ordered by producer, then by sequence
		// as an unsigned number.
		page, err := s.List(t.Context(), Query{Workspace: "ws-a", Key: "k1", Limit: 3,
			Before: &Cursor{At: confBase.Add(36*time.Hour + 18)}})
		require.NoError(t, err)
		require.Len(t, page.Entries, 3)
		for i, want := range []Cursor{{Producer: "p2", Seq: math.MaxUint64}, {Producer: "p2", Seq: math.MaxInt64 + 1}, {Producer: "p2", Seq: math.MaxInt64}} {
			want.At = confBase.Add(36*time.Hour + 17)
			require.Equal(t, want, page.Entries[i].cursor())
		}
	})

	t.Run("page tokens are bound to their workspace", func(t *testing.T) {
		s := backend(t)(t)
		require.NoError(t, s.Append(t.Context(), confData()))
		page, err := s.List(t.Context(), Query{Workspace: "ws-a", Limit: 5})
		require.NoError(t, err)
		require.NotNil(t, page.Next)
		tok := EncodeCursor("ws-a", *page.Next)
		_, err = DecodeCursor("ws-b", tok)
		require.ErrorIs(t, err, ErrBadCursor)
		for _, bad := range []string{"", "!!", tok[:len(tok)-2], EncodeCursor("ws-a", Cursor{At: time.Unix(0, -1)})} {
			_, err = DecodeCursor("ws-a", bad)
			require.ErrorIs(t, err, ErrBadCursor, "%q", bad)
		}
	})

	t.Run("a selective filter examines a bounded number of entries", func(t *testing.T) {
		s := backend(t)(t)
		var es []Entry
		for i := range MaxScan + 1000 {
			st := int32(200)
			if i < 3 {
				st = 500 // the oldest three only
			}
			es = append(es, Entry{Workspace: "big", Key: "k", Owner: "o", Model: "m", Status: st,
				At: confBase.Add(time.Duration(i) * time.Second), Producer: "p", Seq: uint64(i), Record: []byte{1}})
		}
		for i := 0; i < len(es); i += 2000 {
			require.NoError(t, s.Append(t.Context(), es[i:min(i+2000, len(es))]))
		}
		q := Query{Workspace: "big", Key: "k", Status: 500, Limit: 10}
		first, err := s.List(t.Context(), q)
		require.NoError(t, err)
		require.Empty(t, first.Entries)
		require.NotNil(t, first.Next, "a short page goes on from where the scan stopped")
		got, pages := confListPages(t, s, q)
		require.Equal(t, confWant(es, q), got)
		require.Equal(t, 2, pages)
		q = Query{Workspace: "big", Limit: 500}
		require.Equal(t, confWant(es, q), confListAll(t, s, q))
	})

	t.Run("trim drops entries older than the cutoff", func(t *testing.T) {
		s := backend(t)(t)
		es := confData()
		require.NoError(t, s.Append(t.Context(), es))
		// On a 10-minute boundary: both stores drop exactly what is older.
		cutoff := confBase.Add(36 * time.Hour)
		n, err := s.Trim(t.Context(), cutoff)
		require.NoError(t, err)
		require.Positive(t, n)
		kept := slices.DeleteFunc(slices.Clone(es), func(e Entry) bool { return e.At.Before(cutoff) })
		require.NotEmpty(t, kept)
		require.Less(t, len(kept), len(es))
		for _, ws := range []string{"ws-a", "ws-b"} {
			q := Query{Workspace: ws, Limit: 1000}
			require.Equal(t, confWant(kept, q), confListAll(t, s, q))
		}
		n, err = s.Trim(t.Context(), cutoff)
		require.NoError(t, err)
		require.Zero(t, n)

		// A late entry for a trimmed time is stored, and trimmed again.
		late := es[0]
		require.NoError(t, s.Append(t.Context(), []Entry{late}))
		q := Query{Workspace: "ws-a", Limit: 1000}
		require.Equal(t, confWant(append(kept, late), q), confListAll(t, s, q))
		n, err = s.Trim(t.Context(), cutoff)
		require.NoError(t, err)
		require.Positive(t, n)
		require.Equal(t, confWant(kept, q), confListAll(t, s, q))
	})

	t.Run("cap keeps a workspace's newest entries", func(t *testing.T) {
		s := backend(t)(t)
		es := confData()
		require.NoError(t, s.Append(t.Context(), es))
		all := Query{Workspace: "ws-a", Limit: 1000}
		before := confWant(es, all)
		const keep = 17
		n, err := s.Cap(t.Context(), "ws-a", keep)
		require.NoError(t, err)
		require.Equal(t, len(before)-keep, n)
		kept := before[:keep]
		require.Equal(t, kept, confListAll(t, s, all))
		for _, q := range []Query{
			{Workspace: "ws-a", Key: "k1", Limit: 5},
			{Workspace: "ws-a", Owner: "o0", Limit: 5},
			{Workspace: "ws-a", Model: "m3", Status: 200, Limit: 5},
		} {
			require.Equal(t, confWant(kept, q), confListAll(t, s, q), "%+v", q)
		}
		other := Query{Workspace: "ws-b", Limit: 1000}
		require.Equal(t, confWant(es, other), confListAll(t, s, other), "another workspace keeps every entry")

		n, err = s.Cap(t.Context(), "ws-a", keep)
		require.NoError(t, err)
		require.Zero(t, n, "a workspace within its cap loses nothing")
		n, err = s.Cap(t.Context(), "ws-none", 0)
		require.NoError(t, err)
		require.Zero(t, n)

		// An entry appended after the cut pushes the oldest kept one out.
		late := Entry{Workspace: "ws-a", Key: "k9", Owner: "o9", Model: "m9", Status: 200,
			At: confBase.Add(30 * 24 * time.Hour), Producer: "p9", Seq: 1, Record: []byte("late")}
		require.NoError(t, s.Append(t.Context(), []Entry{late}))
		n, err = s.Cap(t.Context(), "ws-a", keep)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, append([]Entry{late}, kept[:keep-1]...), confListAll(t, s, all))
	})

	t.Run("reopens what it wrote", func(t *testing.T) {
		open := backend(t)
		es := confData()
		s := open(t)
		require.NoError(t, s.Append(t.Context(), es[:200]))
		require.NoError(t, s.Close())

		s = open(t)
		q := Query{Workspace: "ws-a", Limit: 1000}
		require.Equal(t, confWant(es[:200], q), confListAll(t, s, q))
		require.NoError(t, s.Append(t.Context(), es[150:]))
		require.Equal(t, confWant(es, q), confListAll(t, s, q))
		n, err := s.Trim(t.Context(), confBase.Add(24*time.Hour))
		require.NoError(t, err)
		require.Positive(t, n)
		require.NoError(t, s.Close())

		s = open(t)
		kept := slices.DeleteFunc(slices.Clone(es), func(e Entry) bool { return e.At.Before(confBase.Add(24 * time.Hour)) })
		require.Equal(t, confWant(kept, q), confListAll(t, s, q))
	})
}
