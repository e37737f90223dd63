package usage

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// trimInterval is how often each replica drops request log entries
	// past their retention, beyond the store's size bound or beyond their
	// workspace's cap.
	trimInterval = time.Minute
	// rollupInterval is how often each replica rolls old days up into
	// months. Both jobs are idempotent, safe on every replica.
	rollupInterval = 10 * time.Minute
)

// maintain runs every job for the injected clock's now.
func (s *Server) maintain(ctx context.Context) error {
	if err := s.trimLog(ctx); err != nil {
		return err
	}
	return s.rollupOld(ctx)
}

// trimLog drops request log entries older than the retention, then cuts
// each capped workspace to its cap.
func (s *Server) trimLog(ctx context.Context) error {
	if _, err := s.rlog.Trim(ctx, s.clk.Now().Add(-s.retention)); err != nil {
		return fmt.Errorf("request log trim: %w", err)
	}
	return s.capLog(ctx)
}

// rollupOld keeps the current and previous month as days: every reset
// period (at most a month back) and the default 30-day series stay exact.
func (s *Server) rollupOld(ctx context.Context) error {
	now := s.clk.Now().UTC()
	this := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	_, err := s.st.rollup(ctx, this.AddDate(0, -1, 0))
	return err
}

// runJanitor runs every job at start, then each on its interval.
func (s *Server) runJanitor(ctx context.Context) {
	trim := time.NewTicker(trimInterval)
	defer trim.Stop()
	roll := time.NewTicker(rollupInterval)
	defer roll.Stop()
	job := s.maintain
	for {
		if err := job(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("usage janitor", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-trim.C:
			job = s.trimLog
		case <-roll.C:
			job = s.rollupOld
		}
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
			t, _, err := decodeTally(res[1][0].Value)
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
