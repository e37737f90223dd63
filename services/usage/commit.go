package usage

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// entry is one validated, priced record ready to store.
type entry struct {
	rid, ws, key, owner string
	idKey, logKey       string
	aggKey              string
	val                 []byte // the marshalled log entry
	delta               tally
}

// submission is one RecordUsage call waiting for its group to commit.
type submission struct {
	entries []*entry
	done    chan outcome // buffered, 1
}

type outcome struct {
	accepted, duplicates int
	err                  error
}

// aggState is what the committer knows of an aggregate: its value and the
// mod revision it was read or written at (0 = absent).
type aggState struct {
	t   tally
	rev int64
}

const (
	// maxGroupRecords bounds one group commit.
	maxGroupRecords = 4096
	// maxAggCache bounds the committer's aggregate cache; it is dropped
	// whole past this, which costs one read per aggregate afterwards.
	maxAggCache = 100_000
	// commitLinger is how long a group waits for more records before it
	// commits: it caps a replica at about 1/commitLinger groups a second
	// whatever the request rate, for that much added latency per ack.
	commitLinger = 10 * time.Millisecond
	// maxConflicts bounds retries of one Txn that lost a race to another
	// replica or met a duplicate.
	maxConflicts = 32
)

// committer coalesces concurrent RecordUsage calls into group commits: one
// goroutine drains every waiting submission, writes them in as few etcd
// Txns as the limits allow and then answers them all. etcd writes thus grow
// with the number of active aggregates, and the request log is written in
// bulk, not one Txn per request.
type committer struct {
	st  store
	log *slog.Logger
	in  chan *submission

	// Only the run goroutine touches these.
	aggs  map[string]aggState
	known map[string]string // wk key -> owner already indexed

	txns    metric.Int64Counter
	records metric.Int64Counter
	latency metric.Float64Histogram

	stop chan struct{}
	wg   sync.WaitGroup
}

func newCommitter(st store, log *slog.Logger, meter metric.Meter) (*committer, error) {
	c := &committer{
		st: st, log: log,
		in:    make(chan *submission, 1024),
		aggs:  map[string]aggState{},
		known: map[string]string{},
		stop:  make(chan struct{}),
	}
	var err error
	if c.txns, err = meter.Int64Counter("keygate.usage.etcd.txns", metric.WithUnit("{txn}"),
		metric.WithDescription("etcd write transactions by the usage ledger")); err != nil {
		return nil, err
	}
	if c.records, err = meter.Int64Counter("keygate.usage.records", metric.WithUnit("{record}"),
		metric.WithDescription("usage records by result: accepted, duplicate")); err != nil {
		return nil, err
	}
	if c.latency, err = meter.Float64Histogram("keygate.usage.commit.duration", metric.WithUnit("s"),
		metric.WithDescription("time to make one group of usage records durable")); err != nil {
		return nil, err
	}
	c.wg.Add(1)
	go c.run()
	return c, nil
}

var errClosed = fmt.Errorf("%w: shutting down", ErrUnavailable)

// submit queues entries and waits until they are durable (or known
// duplicates). A cancelled ctx stops the wait, not the write: a retry then
// finds the records as duplicates.
func (c *committer) submit(ctx context.Context, entries []*entry) (outcome, error) {
	sub := &submission{entries: entries, done: make(chan outcome, 1)}
	select {
	case c.in <- sub:
	case <-c.stop:
		return outcome{}, errClosed
	case <-ctx.Done():
		return outcome{}, ctx.Err()
	}
	select {
	case o := <-sub.done:
		return o, o.err
	case <-ctx.Done():
		return outcome{}, ctx.Err()
	}
}

func (c *committer) close() {
	close(c.stop)
	c.wg.Wait()
}

func (c *committer) run() {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-c.stop
		cancel()
	}()
	for {
		var group []*submission
		select {
		case <-c.stop:
			return
		case s := <-c.in:
			group = append(group, s)
		}
		n := len(group[0].entries)
		linger := time.NewTimer(commitLinger)
	drain:
		for n < maxGroupRecords {
			select {
			case s := <-c.in:
				group = append(group, s)
				n += len(s.entries)
			case <-linger.C:
				break drain
			case <-c.stop:
				break drain
			}
		}
		linger.Stop()
		c.commitGroup(ctx, group)
	}
}

// commitGroup writes a group and answers its submissions. A failure fails
// the whole group; Txns that did commit make their records duplicates on
// the client's retry, so nothing counts twice.
func (c *committer) commitGroup(ctx context.Context, group []*submission) {
	start := time.Now()
	first := map[string]*entry{}
	var pending []*entry
	for _, s := range group {
		for _, e := range s.entries {
			if _, dup := first[e.rid]; !dup {
				first[e.rid] = e
				pending = append(pending, e)
			}
		}
	}
	stored, err := c.write(ctx, pending)
	if err != nil {
		c.log.Error("usage group commit failed", "records", len(pending), "err", err)
	}
	var acc, dup int64
	for _, s := range group {
		o := outcome{err: err}
		if err == nil {
			for _, e := range s.entries {
				// Only the first copy of a request id in the group counts.
				if first[e.rid] == e && stored[e] {
					o.accepted++
				} else {
					o.duplicates++
				}
			}
			acc += int64(o.accepted)
			dup += int64(o.duplicates)
		}
		s.done <- o
	}
	c.records.Add(ctx, acc, metric.WithAttributes(attribute.String("result", "accepted")))
	c.records.Add(ctx, dup, metric.WithAttributes(attribute.String("result", "duplicate")))
	c.latency.Record(ctx, time.Since(start).Seconds())
	if len(c.aggs) > maxAggCache {
		clear(c.aggs)
	}
}

// write stores entries (distinct request ids) and reports which were new.
func (c *committer) write(ctx context.Context, pending []*entry) (map[*entry]bool, error) {
	stored := make(map[*entry]bool, len(pending))
	// Records of one aggregate side by side, so each Txn carries few
	// aggregates.
	slices.SortStableFunc(pending, func(a, b *entry) int { return cmp.Compare(a.aggKey, b.aggKey) })
	conflicts := 0
	for len(pending) > 0 {
		if err := c.loadAggs(ctx, pending); err != nil {
			return nil, err
		}
		n, txn, news := c.buildTxn(ctx, pending)
		resp, err := txn.Commit()
		if err != nil {
			return nil, fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
		}
		c.txns.Add(ctx, 1)
		chunk := pending[:n]
		if resp.Succeeded {
			for _, e := range chunk {
				stored[e] = true
			}
			for k, t := range news {
				c.aggs[k] = aggState{t: t, rev: resp.Header.Revision}
			}
			for _, e := range chunk {
				c.known[wkKey(e.ws, e.key)] = e.owner
			}
			pending = pending[n:]
			conflicts = 0
			continue
		}
		// A record exists already or another replica moved an aggregate:
		// drop the duplicates, re-read the aggregates and try again.
		conflicts++
		if conflicts > maxConflicts {
			return nil, fmt.Errorf("%w: %d write conflicts in a row", ErrUnavailable, conflicts)
		}
		dups, err := c.refresh(ctx, chunk)
		if err != nil {
			return nil, err
		}
		pending = slices.DeleteFunc(pending, func(e *entry) bool { return dups[e] })
	}
	return stored, nil
}

// loadAggs reads the aggregates that the next Txn may touch and the cache
// lacks.
func (c *committer) loadAggs(ctx context.Context, pending []*entry) error {
	var missing []string
	seen := map[string]bool{}
	for _, e := range pending[:min(len(pending), maxTxnOps)] {
		if _, ok := c.aggs[e.aggKey]; !ok && !seen[e.aggKey] {
			seen[e.aggKey] = true
			missing = append(missing, e.aggKey)
		}
	}
	return c.readAggs(ctx, missing)
}

func (c *committer) readAggs(ctx context.Context, keys []string) error {
	spans := make([]span, len(keys))
	for i, k := range keys {
		spans[i] = span{from: k}
	}
	res, err := c.st.readSpans(ctx, spans)
	if err != nil {
		return err
	}
	for i, kvs := range res {
		st := aggState{}
		if len(kvs) == 1 {
			t, err := decodeTally(kvs[0].Value)
			if err != nil {
				return fmt.Errorf("aggregate %q: %w", keys[i], err)
			}
			st = aggState{t: t, rev: kvs[0].ModRevision}
		}
		c.aggs[keys[i]] = st
	}
	return nil
}

// buildTxn packs as many leading pending entries as fit into one Txn: for
// each record, a compare that its id is new and puts of the id and log
// entry; for each aggregate, a compare on its mod revision and a put of the
// new total. It returns how many entries it took and the new totals.
func (c *committer) buildTxn(ctx context.Context, pending []*entry) (int, clientv3.Txn, map[string]tally) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	news := map[string]tally{}
	wk := map[string]bool{}
	bytes := 0
	n := 0
	for _, e := range pending {
		_, aggIn := news[e.aggKey]
		wkk := wkKey(e.ws, e.key)
		owner, indexed := c.known[wkk]
		needWK := (!indexed || owner != e.owner) && !wk[wkk]
		nc, no := 1, 2
		if !aggIn {
			nc, no = 2, 3
		}
		if needWK {
			no++
		}
		size := len(e.idKey) + len(e.logKey) + 2*len(e.val) + len(e.aggKey) + 64
		// The aggregate puts are appended last: count them now.
		if n > 0 && (len(cmps)+nc > maxTxnOps || len(ops)+len(news)+no > maxTxnOps || bytes+size > maxTxnBytes) {
			break
		}
		bytes += size
		cmps = append(cmps, clientv3.Compare(clientv3.Version(e.idKey), "=", 0))
		ops = append(ops, clientv3.OpPut(e.idKey, e.logKey), clientv3.OpPut(e.logKey, string(e.val)))
		if !aggIn {
			st := c.aggs[e.aggKey]
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(e.aggKey), "=", st.rev))
			news[e.aggKey] = st.t
		}
		t := news[e.aggKey]
		t.add(e.delta)
		news[e.aggKey] = t
		if needWK {
			wk[wkk] = true
			ops = append(ops, clientv3.OpPut(wkk, e.owner))
		}
		n++
	}
	// The aggregate puts go last, once their totals are final.
	for k, t := range news {
		ops = append(ops, clientv3.OpPut(k, string(encodeTally(t))))
	}
	return n, c.st.cli.Txn(ctx).If(cmps...).Then(ops...), news
}

// refresh re-reads a failed chunk's ids and aggregates and returns the
// entries already stored.
func (c *committer) refresh(ctx context.Context, chunk []*entry) (map[*entry]bool, error) {
	spans := make([]span, len(chunk))
	aggSeen := map[string]bool{}
	var aggKeys []string
	for i, e := range chunk {
		spans[i] = span{from: e.idKey}
		if !aggSeen[e.aggKey] {
			aggSeen[e.aggKey] = true
			aggKeys = append(aggKeys, e.aggKey)
		}
	}
	res, err := c.st.readSpans(ctx, spans)
	if err != nil {
		return nil, err
	}
	dups := map[*entry]bool{}
	for i, kvs := range res {
		if len(kvs) > 0 {
			dups[chunk[i]] = true
		}
	}
	if err := c.readAggs(ctx, aggKeys); err != nil {
		return nil, err
	}
	return dups, nil
}
