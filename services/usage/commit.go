package usage

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/keygate/keygate/pkg/money"
)

// entry is one validated, priced record ready to store.
type entry struct {
	rid, ws, key, owner string
	model               string
	at                  int64 // record time, Unix nanoseconds
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

// meters are the ledger's instruments, with attribute sets bound once.
type meters struct {
	txns    metric.Int64Counter
	records metric.Int64Counter
	spend   metric.Float64Counter
	evicted metric.Int64Counter
	latency metric.Float64Histogram

	accepted, duplicate, rejected metric.AddOption
	reason                        map[string]metric.AddOption // eviction reason
}

func newMeters(meter metric.Meter) (*meters, error) {
	m := &meters{
		accepted:  metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "accepted"))),
		duplicate: metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "duplicate"))),
		rejected:  metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "rejected"))),
		reason: map[string]metric.AddOption{
			"cap":       metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "cap"))),
			"retention": metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "retention"))),
		},
	}
	var err error
	if m.txns, err = meter.Int64Counter("keygate.usage.etcd.txns", metric.WithUnit("{txn}"),
		metric.WithDescription("etcd write transactions by the usage ledger")); err != nil {
		return nil, err
	}
	if m.records, err = meter.Int64Counter("keygate.usage.records", metric.WithUnit("{record}"),
		metric.WithDescription("usage records by result: accepted, duplicate, rejected")); err != nil {
		return nil, err
	}
	// A float: the metric API has no exact decimal. Each Add is one
	// group's exact per-model sum in nanodollars, converted once; float64
	// holds whole nanodollars exactly up to about 9 million USD.
	if m.spend, err = meter.Float64Counter("keygate.usage.spend", metric.WithUnit("USD"),
		metric.WithDescription("cost of accepted usage records by model")); err != nil {
		return nil, err
	}
	if m.evicted, err = meter.Int64Counter("keygate.usage.log.evicted", metric.WithUnit("{entry}"),
		metric.WithDescription("request log entries deleted by reason: retention, cap")); err != nil {
		return nil, err
	}
	if m.latency, err = meter.Float64Histogram("keygate.usage.commit.duration", metric.WithUnit("s"),
		metric.WithDescription("time to make one group of usage records durable")); err != nil {
		return nil, err
	}
	return m, nil
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
	m   *meters
	in  chan *submission
	// trim wakes the janitor to enforce the log cap after trimEvery
	// accepted records.
	trim      chan struct{}
	trimEvery int64
	// evicted is the highest watermark this replica has seen; RecordUsage
	// refuses older records up front with it.
	evicted atomic.Int64

	// Only the run goroutine touches these.
	aggs       map[string]aggState
	known      map[string]string // wk key -> owner already indexed
	wm, wmRev  int64             // the watermark and its mod revision
	wmLoaded   bool
	sinceTrim  int64
	spendAttrs map[string]metric.AddOption // by model

	stop chan struct{}
	wg   sync.WaitGroup
}

func newCommitter(st store, log *slog.Logger, m *meters, trimEvery int) *committer {
	c := &committer{
		st: st, log: log, m: m,
		in:         make(chan *submission, 1024),
		trim:       make(chan struct{}, 1),
		trimEvery:  int64(max(trimEvery, 1)),
		aggs:       map[string]aggState{},
		known:      map[string]string{},
		spendAttrs: map[string]metric.AddOption{},
		stop:       make(chan struct{}),
	}
	c.wg.Add(1)
	go c.run()
	return c
}

// seenWatermark raises evicted to wm unless it is higher.
func (c *committer) seenWatermark(wm int64) {
	for {
		cur := c.evicted.Load()
		if cur >= wm || c.evicted.CompareAndSwap(cur, wm) {
			return
		}
	}
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
	stored, stale, err := c.write(ctx, pending)
	if err != nil {
		c.log.Error("usage group commit failed", "records", len(pending), "err", err)
	}
	var acc, dup, rej int64
	for _, s := range group {
		o := outcome{err: err}
		for _, e := range s.entries {
			// Only the first copy of a request id in the group counts.
			switch f := first[e.rid]; {
			case f == e && stored[e]:
				o.accepted++
			case stale[f]:
				rej++
				if o.err == nil {
					o.err = invalidf("record %q: its time %s is at or before the newest request id evicted from the ledger (%s), so it cannot be deduplicated and is refused; if it was sent before, it was counted then",
						e.rid, time.Unix(0, e.at).UTC().Format(time.RFC3339Nano), time.Unix(0, c.wm).UTC().Format(time.RFC3339Nano))
				}
			case err == nil:
				o.duplicates++
			}
		}
		// The metrics count what was stored even when the answer is an
		// error.
		acc += int64(o.accepted)
		dup += int64(o.duplicates)
		if o.err != nil {
			o.accepted, o.duplicates = 0, 0
		}
		s.done <- o
	}
	c.m.records.Add(ctx, acc, c.m.accepted)
	c.m.records.Add(ctx, dup, c.m.duplicate)
	if rej > 0 {
		c.m.records.Add(ctx, rej, c.m.rejected)
	}
	c.addSpend(ctx, pending, stored)
	c.m.latency.Record(ctx, time.Since(start).Seconds())
	if len(c.aggs) > maxAggCache {
		clear(c.aggs)
	}
	if c.sinceTrim += acc; c.sinceTrim >= c.trimEvery {
		c.sinceTrim = 0
		select {
		case c.trim <- struct{}{}:
		default:
		}
	}
}

// addSpend adds the exact cost of the stored records, summed per model.
func (c *committer) addSpend(ctx context.Context, pending []*entry, stored map[*entry]bool) {
	byModel := map[string]money.Nanos{}
	for _, e := range pending {
		if stored[e] {
			byModel[e.model] += e.delta.Cost
		}
	}
	for model, cost := range byModel {
		opt, ok := c.spendAttrs[model]
		if !ok {
			// Models are the keystore's priced catalogue: few values.
			opt = metric.WithAttributeSet(attribute.NewSet(attribute.String("model", model)))
			c.spendAttrs[model] = opt
		}
		c.m.spend.Add(ctx, float64(cost)/1e9, opt)
	}
}

// write stores entries (distinct request ids) and reports which were new
// and which are at or before the eviction watermark, so neither stored nor
// known duplicates. stored is filled even on error.
func (c *committer) write(ctx context.Context, pending []*entry) (stored, stale map[*entry]bool, err error) {
	stored = make(map[*entry]bool, len(pending))
	stale = map[*entry]bool{}
	// Records of one aggregate side by side, so each Txn carries few
	// aggregates.
	slices.SortStableFunc(pending, func(a, b *entry) int { return cmp.Compare(a.aggKey, b.aggKey) })
	conflicts := 0
	for {
		if !c.wmLoaded {
			if err := c.loadWatermark(ctx); err != nil {
				return stored, stale, err
			}
		}
		pending = slices.DeleteFunc(pending, func(e *entry) bool {
			if e.at <= c.wm {
				stale[e] = true
				return true
			}
			return false
		})
		if len(pending) == 0 {
			return stored, stale, nil
		}
		if err := c.loadAggs(ctx, pending); err != nil {
			return stored, stale, err
		}
		n, txn, news := c.buildTxn(ctx, pending)
		resp, err := txn.Commit()
		if err != nil {
			return stored, stale, fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
		}
		c.m.txns.Add(ctx, 1)
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
		// A record exists already, another replica moved an aggregate or
		// the janitor raised the watermark: drop the duplicates, re-read
		// and try again.
		conflicts++
		if conflicts > maxConflicts {
			return stored, stale, fmt.Errorf("%w: %d write conflicts in a row", ErrUnavailable, conflicts)
		}
		dups, err := c.refresh(ctx, chunk)
		if err != nil {
			return stored, stale, err
		}
		pending = slices.DeleteFunc(pending, func(e *entry) bool { return dups[e] })
	}
}

func (c *committer) loadWatermark(ctx context.Context) error {
	wm, rev, err := c.st.watermark(ctx)
	if err != nil {
		return err
	}
	c.wm, c.wmRev, c.wmLoaded = wm, rev, true
	c.seenWatermark(wm)
	return nil
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
	// Every Txn is void if the janitor evicted anything since the
	// watermark was read: a record it checked against the old watermark
	// might have lost its marker.
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(watermarkKey), "=", c.wmRev)}
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
		ops = append(ops, clientv3.OpPut(e.idKey, ""), clientv3.OpPut(e.logKey, string(e.val)))
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
	if err := c.loadWatermark(ctx); err != nil {
		return nil, err
	}
	return dups, nil
}
