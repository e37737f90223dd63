package usage

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// entry is one validated, priced record ready to store.
type entry struct {
	producer string
	seq      uint64
	ws, key  string
	owner    string
	model    string
	status   int32
	at       time.Time
	// aggKeys are the day aggregates the record counts in: its key's
	// first, then its levels' (levels.go).
	aggKeys []string
	// logCap is the workspace's request-log cap the record carried (0 =
	// none but the store's own bounds).
	logCap int64
	val    []byte // the marshalled log entry
	delta  tally
	// added is set by the committer when the record was counted now
	// rather than found already counted.
	added bool
}

// id is a record's identity: its producer and sequence number.
type id struct {
	producer string
	seq      uint64
}

func (e *entry) id() id { return id{e.producer, e.seq} }

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
	latency metric.Float64Histogram

	accepted, duplicate, rejected metric.AddOption
}

func newMeters(meter metric.Meter) (*meters, error) {
	m := &meters{
		accepted:  metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "accepted"))),
		duplicate: metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "duplicate"))),
		rejected:  metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "rejected"))),
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
	if m.latency, err = meter.Float64Histogram("keygate.usage.commit.duration", metric.WithUnit("s"),
		metric.WithDescription("time to make one group of usage records durable"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return nil, err
	}
	return m, nil
}

// aggState is what the committer knows of an aggregate: its value and the
// mod revision it was read or written at (0 = absent).
type aggState struct {
	agg
	rev int64
}

const (
	// maxGroupRecords bounds one group commit.
	maxGroupRecords = 50_000
	// maxAggCache bounds the committer's aggregate cache; it is dropped
	// whole past this, which costs one read per aggregate afterwards.
	maxAggCache = 100_000
	// commitLinger is how long a group waits for more records before it
	// commits. With the time a commit takes, it sets how many groups a
	// replica commits a second, whatever the request rate: etcd sees
	// (active aggregates / aggsPerTxn) Txns per group.
	commitLinger = 20 * time.Millisecond
	// aggsPerTxn leaves room in etcd's 128 ops for a workspace index put
	// per aggregate (a fresh replica knows none of them yet).
	aggsPerTxn = maxTxnOps / 2
	// maxConflicts bounds retries of one Txn that lost a race to another
	// replica.
	maxConflicts = 32
)

// committer coalesces concurrent RecordUsage calls into group commits: one
// goroutine drains every waiting submission, merges the records into their
// aggregates in memory, writes each touched aggregate once (in Txns of
// aggsPerTxn), appends the request log in one batch, then answers them
// all. etcd writes grow with the aggregates active in a group, not with
// the records in it.
//
// Exactly-once without a marker per record: each aggregate keeps, per
// producer, the highest sequence number folded into it. A record counts
// in its aggregate only if its sequence number is above that mark, and the
// mark moves in the same compare-and-swap as the totals. A producer sends
// a batch only after the ones before it were acknowledged, so the records
// it has not yet had acknowledged are exactly those above the marks: a
// retried batch, whole or partly committed, on this replica or another,
// counts each record once.
type committer struct {
	st   store
	rlog RequestLog
	log  *slog.Logger
	m    *meters
	in   chan *submission

	// Only the run goroutine touches these.
	caps logCaps // request-log caps by workspace, read by the janitor

	aggs       map[string]aggState
	known      map[string]string // wk key -> owner already indexed
	spendAttrs map[string]metric.AddOption

	stop    chan struct{}
	closing sync.Once
}

func newCommitter(st store, rlog RequestLog, log *slog.Logger, m *meters) *committer {
	return &committer{
		st: st, rlog: rlog, log: log, m: m,
		in:         make(chan *submission, 1024),
		aggs:       map[string]aggState{},
		known:      map[string]string{},
		spendAttrs: map[string]metric.AddOption{},
		stop:       make(chan struct{}),
	}
}

var errClosed = fmt.Errorf("%w: shutting down", ErrUnavailable)

// submit queues entries and waits until they are durable (or known
// duplicates). A cancelled ctx stops the wait, not the write: a retry then
// finds the records counted.
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

// close stops run after the group it is committing, if any; it may be
// called more than once. Submissions not yet taken fail with errClosed.
func (c *committer) close() {
	c.closing.Do(func() { close(c.stop) })
}

// run commits submitted groups until close.
func (c *committer) run() {
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
// the whole group; aggregates that did commit hold marks that make their
// records duplicates on the client's retry, so nothing counts twice.
func (c *committer) commitGroup(ctx context.Context, group []*submission) {
	start := time.Now()
	first := map[id]*entry{}
	byAgg := map[string][]*entry{}
	var uniq []*entry
	for _, s := range group {
		for _, e := range s.entries {
			if _, dup := first[e.id()]; !dup {
				first[e.id()] = e
				for _, k := range e.aggKeys {
					byAgg[k] = append(byAgg[k], e)
				}
				uniq = append(uniq, e)
			}
		}
	}
	err := c.writeAggs(ctx, byAgg)
	if err == nil {
		err = c.appendLog(ctx, uniq)
	}
	if err != nil {
		c.log.Error("usage group commit failed", "records", len(uniq), "err", err)
	}
	var acc, dup int64
	for _, s := range group {
		o := outcome{err: err}
		for _, e := range s.entries {
			// Only the first copy of a record in the group counts.
			if f := first[e.id()]; f == e && e.added {
				o.accepted++
			} else {
				o.duplicates++
			}
		}
		acc += int64(o.accepted)
		dup += int64(o.duplicates)
		if o.err != nil {
			o.accepted, o.duplicates = 0, 0
		}
		s.done <- o
	}
	// The metrics count what was stored even when the answer is an error.
	c.m.records.Add(ctx, acc, c.m.accepted)
	if err == nil {
		c.m.records.Add(ctx, dup, c.m.duplicate)
	}
	c.addSpend(ctx, uniq)
	c.m.latency.Record(ctx, time.Since(start).Seconds())
	if len(c.aggs) > maxAggCache {
		clear(c.aggs)
	}
}

// appendLog writes the request log entries of the group, duplicates
// included: writing an entry twice stores it once, and a record whose
// aggregate committed before a crash gets its log entry on the retry.
func (c *committer) appendLog(ctx context.Context, es []*entry) error {
	out := make([]reqlog.Entry, len(es))
	for i, e := range es {
		out[i] = reqlog.Entry{
			Workspace: e.ws, Key: e.key, Owner: e.owner, Model: e.model, Status: e.status,
			At: e.at, Producer: e.producer, Seq: e.seq, Record: e.val,
		}
	}
	if err := c.rlog.Append(ctx, out); err != nil {
		return fmt.Errorf("%w: request log: %w", ErrUnavailable, err)
	}
	c.caps.note(es)
	return nil
}

// addSpend adds the exact cost of the records counted now, per model.
func (c *committer) addSpend(ctx context.Context, es []*entry) {
	byModel := map[string]money.Nanos{}
	for _, e := range es {
		if e.added {
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

// writeAggs folds the records into their aggregates, aggsPerTxn
// aggregates to a Txn.
func (c *committer) writeAggs(ctx context.Context, byAgg map[string][]*entry) error {
	keys := make([]string, 0, len(byAgg))
	for k := range byAgg {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for chunk := range slices.Chunk(keys, aggsPerTxn) {
		if err := c.writeChunk(ctx, chunk, byAgg); err != nil {
			return err
		}
	}
	return nil
}

// writeChunk commits one Txn: for each aggregate a compare on its mod
// revision and a put of its new totals and marks, plus the workspace index
// entries not yet known. A lost race re-reads and recomputes.
func (c *committer) writeChunk(ctx context.Context, keys []string, byAgg map[string][]*entry) error {
	if err := c.loadAggs(ctx, keys); err != nil {
		return err
	}
	for conflicts := 0; ; conflicts++ {
		cmps := make([]clientv3.Cmp, 0, len(keys))
		ops := make([]clientv3.Op, 0, len(keys))
		news := make(map[string]agg, len(keys))
		var added []*entry
		wk := map[string]string{}
		for _, k := range keys {
			st := c.aggs[k]
			next := agg{t: st.t, marks: maps.Clone(st.marks)}
			for _, e := range byAgg[k] {
				// The key's aggregate says whether the record is new; a
				// level's counts it under its own marks.
				isKey := k == e.aggKeys[0]
				if e.seq > st.marks[e.producer] {
					next.t.add(e.delta)
					if isKey {
						added = append(added, e)
					}
				}
				if next.marks == nil {
					next.marks = map[string]uint64{}
				}
				next.marks[e.producer] = max(next.marks[e.producer], e.seq)
				if owner, ok := c.known[wkKey(e.ws, e.key)]; isKey && (!ok || owner != e.owner) {
					wk[wkKey(e.ws, e.key)] = e.owner
				}
			}
			news[k] = next
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", st.rev))
			ops = append(ops, clientv3.OpPut(k, string(encodeAgg(next))))
		}
		for k, owner := range wk {
			ops = append(ops, clientv3.OpPut(k, owner))
		}
		resp, err := c.st.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("%w: etcd txn: %w", ErrUnavailable, err)
		}
		c.m.txns.Add(ctx, 1)
		if resp.Succeeded {
			for k, a := range news {
				c.aggs[k] = aggState{agg: a, rev: resp.Header.Revision}
			}
			for _, e := range added {
				e.added = true
			}
			for k, owner := range wk {
				c.known[k] = owner
			}
			return nil
		}
		// Another replica moved an aggregate: re-read and recompute.
		if conflicts >= maxConflicts {
			return fmt.Errorf("%w: %d write conflicts in a row", ErrUnavailable, conflicts)
		}
		if err := c.readAggs(ctx, keys); err != nil {
			return err
		}
	}
}

// loadAggs reads the aggregates the cache lacks.
func (c *committer) loadAggs(ctx context.Context, keys []string) error {
	var missing []string
	for _, k := range keys {
		if _, ok := c.aggs[k]; !ok {
			missing = append(missing, k)
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
			a, err := decodeAgg(kvs[0].Value)
			if err != nil {
				return fmt.Errorf("aggregate %q: %w", keys[i], err)
			}
			st = aggState{agg: a, rev: kvs[0].ModRevision}
		}
		c.aggs[keys[i]] = st
	}
	return nil
}
