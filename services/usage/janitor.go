package usage

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// janitorInterval is how often each replica expires old log entries and
// rolls up old days. Both jobs are idempotent Txns, safe on every replica.
const janitorInterval = 10 * time.Minute

// maintain runs both jobs for the injected clock's now.
func (s *Server) maintain(ctx context.Context) error {
	now := s.clk.Now()
	if _, err := s.st.expire(ctx, now.Add(-s.retention)); err != nil {
		return err
	}
	// Keep the current and previous month as days: every reset period
	// (at most a month back) and the default 30-day series stay exact.
	this := time.Date(now.UTC().Year(), now.UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	_, err := s.st.rollup(ctx, this.AddDate(0, -1, 0))
	return err
}

func (s *Server) runJanitor(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		if err := s.maintain(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("usage janitor", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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

// expire deletes log entries recorded before cutoff, and their dedup
// markers, a Txn of up to 64 records at a time. Records older than the
// retention are refused at RecordUsage, so a deleted marker is never needed.
func (s *store) expire(ctx context.Context, cutoff time.Time) (int, error) {
	wss, err := s.workspaces(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ws := range wss {
		end := logPrefix(ws) + logTime(cutoff)
		for {
			resp, err := s.cli.Get(ctx, logPrefix(ws), clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(maxTxnOps/2))
			if err != nil {
				return n, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
			}
			if len(resp.Kvs) == 0 {
				break
			}
			ops := make([]clientv3.Op, 0, 2*len(resp.Kvs))
			for _, kv := range resp.Kvs {
				if rid, ok := ridOfLogKey(string(kv.Key)); ok {
					ops = append(ops, clientv3.OpDelete(idKey(rid)))
				}
				ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			}
			if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				return n, fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
			}
			n += len(resp.Kvs)
			if !resp.More {
				break
			}
		}
	}
	return n, nil
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
