package reqlog

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// SliceWidth is the time slice the embedded store partitions by: age and
// size retention drop whole slices, each one range deletion, so a store
// holds at most one slice more than its bounds. A listing visits the
// slices newest first: a week is 10,080 of them. Fixed per directory.
const SliceWidth = time.Minute

// Key layout (binary; s = uvarint length + bytes, t = 8-byte big-endian
// Unix nanoseconds, n = 8-byte big-endian sequence):
//
//	bucket(8) 'r' s(workspace) t s(producer) n            -> entry
//	bucket(8) 'k' s(workspace) s(key)   t s(producer) n   -> (index)
//	bucket(8) 'o' s(workspace) s(owner) t s(producer) n   -> (index)
//	bucket(8) 'm' s(workspace) s(model) t s(producer) n   -> (index)
//
// The time slice comes first so that retention is a range deletion of the
// oldest slices; within a slice each family is ordered by time, so a
// listing reads each slice backwards from its cursor.
const (
	famEntry = 'r'
	famKey   = 'k'
	famOwner = 'o'
	famModel = 'm'
)

// Pebble is the embedded store, in a directory on the usage replica's
// volume. One replica owns a directory.
type Pebble struct {
	db       *pebble.DB
	maxBytes int64
	log      *slog.Logger
	width    uint64 // nanoseconds per slice

	mu      sync.Mutex
	buckets []uint64 // slices holding entries, ascending
}

// OpenPebble opens (or creates) the store in dir. maxBytes bounds its
// disk use (0 = by age only); Trim enforces it.
func OpenPebble(dir string, maxBytes int64, log *slog.Logger) (*Pebble, error) {
	return openPebble(dir, maxBytes, log, SliceWidth)
}

func openPebble(dir string, maxBytes int64, log *slog.Logger, width time.Duration) (*Pebble, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := pebble.Open(dir, pebbleOptions(log))
	if err != nil {
		return nil, fmt.Errorf("reqlog: open %s: %w", dir, err)
	}
	p := &Pebble{db: db, maxBytes: maxBytes, log: log, width: uint64(width)}
	if err := p.loadBuckets(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return p, nil
}

// pebbleOptions sizes the store for a log written thousands of entries a
// second and read rarely. Pebble's defaults (4 MB memtables, 2 MB L0
// files, compaction at 4 L0 files) rewrite every entry several times
// within its first minutes: in BenchmarkPebbleAppend they cost 10 µs of
// CPU per entry, these 4-5 µs, at up to two 64 MB memtables of memory.
func pebbleOptions(log *slog.Logger) *pebble.Options {
	o := &pebble.Options{
		Logger:                pebbleLogger{log},
		MemTableSize:          64 << 20,
		L0CompactionThreshold: 8,
		LBaseMaxBytes:         256 << 20,
	}
	o.TargetFileSizes[0] = 32 << 20
	return o
}

// Close closes the store.
func (p *Pebble) Close() error { return p.db.Close() }

// loadBuckets finds the slices that hold data: one seek per slice.
func (p *Pebble) loadBuckets() error {
	it, err := p.db.NewIter(nil)
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; {
		k := it.Key()
		if len(k) < 8 {
			return fmt.Errorf("reqlog: malformed key %x", k)
		}
		b := binary.BigEndian.Uint64(k)
		p.buckets = append(p.buckets, b)
		if b == ^uint64(0) {
			break
		}
		ok = it.SeekGE(bucketKey(b + 1))
	}
	return it.Error()
}

func (p *Pebble) bucketOf(t time.Time) uint64 { return uint64(max(t.UnixNano(), 0)) / p.width }

func bucketKey(b uint64) []byte { return binary.BigEndian.AppendUint64(nil, b) }

// prefix is bucket, family, workspace and, for an index, its value.
func prefix(dst []byte, bucket uint64, fam byte, ws string, val *string) []byte {
	dst = binary.BigEndian.AppendUint64(dst, bucket)
	dst = append(dst, fam)
	dst = appendString(dst, ws)
	if val != nil {
		dst = appendString(dst, *val)
	}
	return dst
}

func appendPos(dst []byte, c Cursor) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(c.At.UnixNano()))
	dst = appendString(dst, c.Producer)
	return binary.BigEndian.AppendUint64(dst, c.Seq)
}

// readPos parses the position at the end of a key after its prefix.
func readPos(b []byte) (Cursor, bool) {
	if len(b) < 8 {
		return Cursor{}, false
	}
	at := int64(binary.BigEndian.Uint64(b))
	prod, rest, ok := readString(b[8:])
	if !ok || len(rest) != 8 {
		return Cursor{}, false
	}
	return Cursor{At: time.Unix(0, at).UTC(), Producer: prod, Seq: binary.BigEndian.Uint64(rest)}, true
}

// Append stores entries, durably (one fsync for the batch). Writing an
// entry again overwrites it with the same bytes.
func (p *Pebble) Append(_ context.Context, es []Entry) error {
	if len(es) == 0 {
		return nil
	}
	b := p.db.NewBatch()
	defer b.Close()
	var key []byte
	seen := map[uint64]bool{}
	for i := range es {
		e := &es[i]
		bk := p.bucketOf(e.At)
		seen[bk] = true
		pos := e.cursor()
		key = appendPos(prefix(key[:0], bk, famEntry, e.Workspace, nil), pos)
		if err := b.Set(key, encodeEntry(e), nil); err != nil {
			return err
		}
		for _, ix := range indexesOf(e) {
			if ix.val == "" {
				continue
			}
			key = appendPos(prefix(key[:0], bk, ix.fam, e.Workspace, &ix.val), pos)
			if err := b.Set(key, nil, nil); err != nil {
				return err
			}
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("reqlog: append: %w", err)
	}
	p.mu.Lock()
	for bk := range seen {
		if i, found := slices.BinarySearch(p.buckets, bk); !found {
			p.buckets = slices.Insert(p.buckets, i, bk)
		}
	}
	p.mu.Unlock()
	return nil
}

// List answers q newest first, reading the most selective index.
func (p *Pebble) List(_ context.Context, q Query) (Page, error) {
	fam, val := byte(famEntry), (*string)(nil)
	switch {
	case q.Key != "":
		fam, val = famKey, &q.Key
	case q.Owner != "":
		fam, val = famOwner, &q.Owner
	case q.Model != "":
		fam, val = famModel, &q.Model
	}
	p.mu.Lock()
	buckets := slices.Clone(p.buckets)
	p.mu.Unlock()
	var page Page
	scanned := 0
	var last *Cursor
	// One iterator for every slice: a sparse listing may visit thousands.
	it, err := p.db.NewIter(nil)
	if err != nil {
		return Page{}, err
	}
	defer it.Close()
	for i := len(buckets) - 1; i >= 0; i-- {
		bk := buckets[i]
		if q.Before != nil && bk > p.bucketOf(q.Before.At) {
			continue
		}
		pre := prefix(nil, bk, fam, q.Workspace, val)
		upper := prefixEnd(pre)
		if q.Before != nil && bk == p.bucketOf(q.Before.At) {
			upper = appendPos(slices.Clone(pre), *q.Before)
		}
		it.SetBounds(pre, upper)
		done, err := p.scan(it, pre, fam, q, &page, &scanned, &last)
		if err != nil {
			return Page{}, err
		}
		if done {
			return page, nil
		}
	}
	return page, nil
}

// scan reads one slice backwards. It reports done when the page is full or
// the scan budget is spent, with page.Next set.
func (p *Pebble) scan(it *pebble.Iterator, lower []byte, fam byte, q Query, page *Page, scanned *int, last **Cursor) (bool, error) {
	var ekey []byte
	var err error
	for ok := it.Last(); ok; ok = it.Prev() {
		pos, ok := readPos(it.Key()[len(lower):])
		if !ok {
			return false, fmt.Errorf("reqlog: malformed key %x", it.Key())
		}
		if *scanned >= MaxScan || len(page.Entries) == q.Limit {
			page.Next = *last
			return true, nil
		}
		*scanned++
		*last = &pos
		e := Entry{Workspace: q.Workspace, At: pos.At, Producer: pos.Producer, Seq: pos.Seq}
		v := it.Value()
		if fam != famEntry {
			ekey = appendPos(prefix(ekey[:0], binary.BigEndian.Uint64(lower), famEntry, q.Workspace, nil), pos)
			var closer interface{ Close() error }
			v, closer, err = p.db.Get(ekey)
			if err != nil {
				// An index entry whose entry a trim removed meanwhile.
				continue
			}
			err = decodeEntry(v, &e)
			_ = closer.Close()
		} else {
			err = decodeEntry(v, &e)
		}
		if err != nil {
			return false, err
		}
		if q.matches(&e) {
			page.Entries = append(page.Entries, e)
		}
	}
	return false, it.Error()
}

// prefixEnd is the smallest key after every key starting with p.
func prefixEnd(p []byte) []byte {
	end := slices.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Trim drops the slices that end at or before cutoff, then the oldest
// slice if the store is over its size bound (never the newest; one per
// call, since the space a drop frees shows only after its files go). It
// returns how many slices it dropped.
func (p *Pebble) Trim(ctx context.Context, cutoff time.Time) (int, error) {
	dropped := 0
	for {
		victim, ok := p.oldest(1, func(b uint64) bool {
			return (b+1)*p.width <= uint64(max(cutoff.UnixNano(), 0))
		})
		if !ok {
			break
		}
		if err := p.drop(ctx, victim); err != nil {
			return dropped, err
		}
		dropped++
	}
	if p.maxBytes <= 0 || p.DiskBytes() <= p.maxBytes {
		return dropped, nil
	}
	victim, ok := p.oldest(2, func(uint64) bool { return true })
	if !ok {
		return dropped, nil
	}
	return dropped + 1, p.drop(ctx, victim)
}

// oldest is the oldest slice if at least least slices are held and it
// passes ok.
func (p *Pebble) oldest(least int, ok func(uint64) bool) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buckets) < least || !ok(p.buckets[0]) {
		return 0, false
	}
	return p.buckets[0], true
}

// drop deletes one slice and compacts its range so the space comes back.
func (p *Pebble) drop(ctx context.Context, bk uint64) error {
	start, end := bucketKey(bk), bucketKey(bk+1)
	if err := p.db.DeleteRange(start, end, pebble.Sync); err != nil {
		return fmt.Errorf("reqlog: trim: %w", err)
	}
	p.mu.Lock()
	p.buckets = slices.DeleteFunc(p.buckets, func(b uint64) bool { return b == bk })
	p.mu.Unlock()
	if err := p.db.Compact(ctx, start, end, false); err != nil {
		return fmt.Errorf("reqlog: compact: %w", err)
	}
	p.log.Info("request log: dropped a slice", "start", time.Unix(0, int64(bk*p.width)).UTC())
	return nil
}

// DiskBytes is the store's disk use.
func (p *Pebble) DiskBytes() int64 { return int64(p.db.Metrics().DiskSpaceUsage()) }

// pebbleLogger sends Pebble's errors to slog and drops its chatter.
type pebbleLogger struct{ log *slog.Logger }

func (pebbleLogger) Infof(string, ...any) {}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("request log store", "err", fmt.Sprintf(format, args...))
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error("request log store: fatal", "err", fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}

// Cap keeps the newest keep entries of workspace ws and deletes the rest,
// with their index entries. It reads the workspace's entries newest first,
// one seek per slice, so its cost grows with the entries kept and the
// slices held; it returns how many entries it deleted.
func (p *Pebble) Cap(_ context.Context, ws string, keep int) (int, error) {
	p.mu.Lock()
	buckets := slices.Clone(p.buckets)
	p.mu.Unlock()
	it, err := p.db.NewIter(nil)
	if err != nil {
		return 0, err
	}
	defer it.Close()
	b := p.db.NewBatch()
	defer func() { _ = b.Close() }()
	flush := func() error {
		if b.Empty() {
			return nil
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("reqlog: cap: %w", err)
		}
		_ = b.Close()
		b = p.db.NewBatch()
		return nil
	}
	seen, deleted, pending := 0, 0, 0
	for i := len(buckets) - 1; i >= 0; i-- {
		pre := prefix(nil, buckets[i], famEntry, ws, nil)
		it.SetBounds(pre, prefixEnd(pre))
		for ok := it.Last(); ok; ok = it.Prev() {
			if seen++; seen <= keep {
				continue
			}
			if err := p.deleteEntry(b, buckets[i], ws, it.Key()[len(pre):], it.Value()); err != nil {
				return deleted, err
			}
			if pending++; pending == capBatch {
				if err := flush(); err != nil {
					return deleted, err
				}
				deleted, pending = deleted+pending, 0
			}
		}
		if err := it.Error(); err != nil {
			return deleted, err
		}
	}
	if err := flush(); err != nil {
		return deleted, err
	}
	return deleted + pending, nil
}

// deleteEntry adds to b the deletion of one entry (its position pos in
// slice bk) and of its index entries.
func (p *Pebble) deleteEntry(b *pebble.Batch, bk uint64, ws string, pos, val []byte) error {
	c, ok := readPos(pos)
	if !ok {
		return fmt.Errorf("reqlog: malformed entry position %x", pos)
	}
	var e Entry
	if err := decodeEntry(val, &e); err != nil {
		return err
	}
	key := appendPos(prefix(nil, bk, famEntry, ws, nil), c)
	if err := b.Delete(key, nil); err != nil {
		return err
	}
	for _, ix := range indexesOf(&e) {
		if ix.val == "" {
			continue
		}
		key = appendPos(prefix(key[:0], bk, ix.fam, ws, &ix.val), c)
		if err := b.Delete(key, nil); err != nil {
			return err
		}
	}
	return nil
}

// index is one secondary index of an entry: its family and value.
type index struct {
	fam byte
	val string
}

// indexesOf lists the secondary indexes an entry is written under.
func indexesOf(e *Entry) [3]index {
	return [3]index{{famKey, e.Key}, {famOwner, e.Owner}, {famModel, e.Model}}
}
