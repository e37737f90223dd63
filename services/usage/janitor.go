package usage

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// janitorInterval is how often each replica expires old log entries,
	// enforces the log cap and rolls up old days. Every job is idempotent,
	// safe on every replica.
	janitorInterval = 10 * time.Minute
	// evictPass bounds the victims one eviction pass holds in memory and
	// covers with one watermark raise.
	defaultEvictPass = 1 << 16
	// evictTxn is how many entries one delete Txn removes: an entry and its
	// marker are two ops.
	evictTxn = maxTxnOps / 2
)

// maintain runs every job for the injected clock's now.
func (s *Server) maintain(ctx context.Context) error {
	now := s.clk.Now()
	if _, err := s.expire(ctx, now.Add(-s.retention)); err != nil {
		return err
	}
	if _, err := s.trim(ctx); err != nil {
		return err
	}
	// Keep the current and previous month as days: every reset period
	// (at most a month back) and the default 30-day series stay exact.
	this := time.Date(now.UTC().Year(), now.UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	_, err := s.st.rollup(ctx, this.AddDate(0, -1, 0))
	return err
}

// runJanitor runs every job at start and each janitorInterval, and the cap
// alone whenever the committer has added a slice of the cap since the last
// trim: at 1,000 records/s a 10-minute tick alone would overshoot the cap
// by 600,000 entries.
func (s *Server) runJanitor(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	job := s.maintain
	for {
		if err := job(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("usage janitor", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			job = s.maintain
		case <-s.com.trim:
			job = func(ctx context.Context) error { _, err := s.trim(ctx); return err }
		}
	}
}

// expire evicts log entries recorded before cutoff, and their markers.
func (s *Server) expire(ctx context.Context, cutoff time.Time) (int, error) {
	wss, err := s.st.workspaces(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ws := range wss {
		end := logPrefix(ws) + logTime(cutoff)
		for {
			resp, err := s.st.cli.Get(ctx, logPrefix(ws), clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(s.evictPass)))
			if err != nil {
				return n, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
			}
			victims := make([]string, len(resp.Kvs))
			for i, kv := range resp.Kvs {
				victims[i] = string(kv.Key)
			}
			if err := s.evict(ctx, victims, "retention"); err != nil {
				return n, err
			}
			n += len(victims)
			if !resp.More {
				break
			}
		}
	}
	return n, nil
}

// trim evicts the oldest log entries, across all workspaces, beyond
// maxLog.
func (s *Server) trim(ctx context.Context) (int, error) {
	n := 0
	for {
		resp, err := s.st.cli.Get(ctx, Prefix+"log/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return n, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		excess := int(resp.Count) - s.maxLog
		if excess <= 0 {
			return n, nil
		}
		// Victims are read at the revision they were counted at: replicas
		// trimming at once then pick the same oldest entries rather than
		// each evicting the excess again. Each pass counts afresh, so the
		// next pass reads past what this one deleted.
		victims, err := s.st.oldest(ctx, min(excess, s.evictPass), resp.Header.Revision)
		if err != nil {
			return n, err
		}
		if len(victims) == 0 {
			return n, nil
		}
		if err := s.evict(ctx, victims, "cap"); err != nil {
			return n, err
		}
		n += len(victims)
	}
}

// evict deletes log entries and their markers. It first raises the
// watermark to the newest victim, so a marker is never gone while a retry
// of its record could still be accepted: a crash in between leaves entries
// under the watermark, which the next pass deletes.
func (s *Server) evict(ctx context.Context, victims []string, reason string) error {
	if len(victims) == 0 {
		return nil
	}
	top := ""
	for _, k := range victims {
		if _, at, _, ok := parseLogKey(k); ok && at > top {
			top = at
		}
	}
	wm, err := s.st.raiseWatermark(ctx, top)
	if err != nil {
		return err
	}
	s.com.evicted.Store(wm)
	for chunk := range slices.Chunk(victims, evictTxn) {
		ops := make([]clientv3.Op, 0, 2*len(chunk))
		for _, k := range chunk {
			if _, _, rid, ok := parseLogKey(k); ok {
				ops = append(ops, clientv3.OpDelete(idKey(rid)))
			}
			ops = append(ops, clientv3.OpDelete(k))
		}
		if _, err := s.st.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
		}
		s.com.m.evicted.Add(ctx, int64(len(chunk)), s.com.m.reason[reason])
	}
	return nil
}

// workspaces lists the workspaces with any usage.
func (s *store) workspaces(ctx context.Context) ([]string, error) {
	p := Prefix + "wk/"
	var out []string
	from := p
	for {
		resp, err := s.cli.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(p)), clientv3.WithKeysOnly(), clientv3.WithLimit(1000))
		if err != nil {
			return nil, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		for _, kv := range resp.Kvs {
			ws, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), p), "/")
			if len(out) == 0 || out[len(out)-1] != ws {
				out = append(out, ws)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		// Skip the rest of this workspace's keys.
		last := out[len(out)-1]
		from = clientv3.GetPrefixRangeEnd(p + last + "/")
	}
}

// rollup folds day aggregates of days before cutoff into month aggregates,
// one (key, model, month) per Txn, so etcd keeps at most about two months of
// days per key and model.
func (s *store) rollup(ctx context.Context, cutoff time.Time) (int, error) {
	type group struct {
		key, model string
		month      time.Time
	}
	var groups []group
	seen := map[group]bool{}
	p := Prefix + "agg/"
	from := p
	for {
		resp, err := s.cli.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(p)), clientv3.WithKeysOnly(), clientv3.WithLimit(1000))
		if err != nil {
			return 0, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		for _, kv := range resp.Kvs {
			r, err := parseAgg(string(kv.Key), nil)
			if err != nil || r.month || !r.start.Before(cutoff) {
				continue
			}
			g := group{r.key, r.model, time.Date(r.start.Year(), r.start.Month(), 1, 0, 0, 0, 0, time.UTC)}
			if !seen[g] {
				seen[g] = true
				groups = append(groups, g)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for _, g := range groups {
		if err := s.rollupOne(ctx, g.key, g.model, g.month); err != nil {
			return 0, err
		}
	}
	return len(groups), nil
}

// rollupOne moves one key and model's days of a month into its month
// aggregate atomically, retrying if another replica got there first.
func (s *store) rollupOne(ctx context.Context, key, model string, month time.Time) error {
	mk := monthKey(key, month, model)
	dp := aggPrefix(key) + "d/" + month.Format(monthLayout) + "-"
	for range maxConflicts {
		res, err := s.readSpans(ctx, []span{prefixSpan(dp), {from: mk}})
		if err != nil {
			return err
		}
		var sum tally
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, kv := range res[0] {
			r, err := parseAgg(string(kv.Key), kv.Value)
			if err != nil || r.model != model {
				continue
			}
			sum.add(r.t)
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		}
		if len(ops) == 0 {
			return nil
		}
		var rev int64
		if len(res[1]) == 1 {
			t, err := decodeTally(res[1][0].Value)
			if err != nil {
				return fmt.Errorf("aggregate %q: %w", mk, err)
			}
			sum.add(t)
			rev = res[1][0].ModRevision
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(mk), "=", rev))
		ops = append(ops, clientv3.OpPut(mk, string(encodeTally(sum))))
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: rollup of %s kept conflicting", ErrUnavailable, mk)
}

// logCursor walks one workspace's log, oldest first.
type logCursor struct {
	keys     []string
	from, to string
	more     bool
}

func (c *logCursor) fill(ctx context.Context, cli *clientv3.Client, limit int, rev int64) error {
	resp, err := cli.Get(ctx, c.from, clientv3.WithRange(c.to), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(limit)), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
	}
	c.keys = c.keys[:0]
	for _, kv := range resp.Kvs {
		c.keys = append(c.keys, string(kv.Key))
	}
	c.more = resp.More && len(resp.Kvs) > 0
	if len(resp.Kvs) > 0 {
		c.from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return nil
}

// headTime is the log time of the cursor's next key.
func (c *logCursor) headTime() string {
	_, at, _, _ := parseLogKey(c.keys[0])
	return at
}

// logHeap orders cursors by their next key's time.
type logHeap []*logCursor

func (h logHeap) Len() int { return len(h) }
func (h logHeap) Less(i, j int) bool {
	return cmp.Or(cmp.Compare(h[i].headTime(), h[j].headTime()), cmp.Compare(h[i].keys[0], h[j].keys[0])) < 0
}
func (h logHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *logHeap) Push(x any)   { *h = append(*h, x.(*logCursor)) }
func (h *logHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

// oldest returns the n oldest log keys at revision rev over every
// workspace, oldest first: a merge of the workspaces' logs, each already in
// time order.
func (s *store) oldest(ctx context.Context, n int, rev int64) ([]string, error) {
	wss, err := s.workspaces(ctx)
	if err != nil {
		return nil, err
	}
	page := min(n, 256)
	h := make(logHeap, 0, len(wss))
	for _, ws := range wss {
		c := &logCursor{from: logPrefix(ws), to: clientv3.GetPrefixRangeEnd(logPrefix(ws))}
		if err := c.fill(ctx, s.cli, page, rev); err != nil {
			return nil, err
		}
		if len(c.keys) > 0 {
			h = append(h, c)
		}
	}
	heap.Init(&h)
	out := make([]string, 0, n)
	for len(out) < n && h.Len() > 0 {
		c := h[0]
		out = append(out, c.keys[0])
		c.keys = c.keys[1:]
		if len(c.keys) == 0 && c.more {
			if err := c.fill(ctx, s.cli, page, rev); err != nil {
				return nil, err
			}
		}
		if len(c.keys) == 0 {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return out, nil
}
