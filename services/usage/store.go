package usage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/pkg/money"
)

// Prefix is where the ledger lives in etcd.
const Prefix = "/keygate/usage/"

// etcd's limits are 128 ops per Txn and 1.5 MiB per request; stay well
// inside them.
const (
	maxTxnOps   = 128
	maxTxnBytes = 1 << 20
)

// store reads and writes the ledger's etcd keys. It keeps no state.
type store struct {
	cli *clientv3.Client
}

func aggPrefix(key string) string { return Prefix + "agg/" + key + "/" }

func dayKey(key string, day time.Time, model string) string {
	return aggPrefix(key) + "d/" + day.Format(dayLayout) + "/" + model
}

func monthKey(key string, month time.Time, model string) string {
	return aggPrefix(key) + "m/" + month.Format(monthLayout) + "/" + model
}

func wkPrefix(ws string) string { return Prefix + "wk/" + ws + "/" }

func wkKey(ws, key string) string { return wkPrefix(ws) + key }

// row is one parsed aggregate.
type row struct {
	key   string
	month bool      // month rollup rather than day
	start time.Time // the day or month start
	model string
	t     tally
}

// parseAgg reads an aggregate key; the value may be nil (keys-only scans).
func parseAgg(k string, v []byte) (row, error) {
	rest, ok := strings.CutPrefix(k, Prefix+"agg/")
	if !ok {
		return row{}, fmt.Errorf("not an aggregate key: %q", k)
	}
	parts := strings.SplitN(rest, "/", 4)
	if len(parts) != 4 {
		return row{}, fmt.Errorf("malformed aggregate key %q", k)
	}
	r := row{key: parts[0], model: parts[3]}
	var err error
	switch parts[1] {
	case "d":
		r.start, err = time.Parse(dayLayout, parts[2])
	case "m":
		r.month = true
		r.start, err = time.Parse(monthLayout, parts[2])
	default:
		err = fmt.Errorf("unknown aggregate kind %q", parts[1])
	}
	if err != nil {
		return row{}, fmt.Errorf("aggregate key %q: %w", k, err)
	}
	if v != nil {
		if r.t, _, err = decodeTally(v); err != nil {
			return row{}, fmt.Errorf("aggregate %q: %w", k, err)
		}
	}
	return r, nil
}

// encodeTally is four varints: about 10 bytes for a busy key-day.
func encodeTally(t tally) []byte {
	b := make([]byte, 0, 4*binary.MaxVarintLen64)
	b = binary.AppendVarint(b, t.Requests)
	b = binary.AppendVarint(b, t.Prompt)
	b = binary.AppendVarint(b, t.Completion)
	return binary.AppendVarint(b, int64(t.Cost))
}

// decodeTally reads the tally at the start of an aggregate's value and
// returns the rest (the marks of a day aggregate).
func decodeTally(b []byte) (tally, []byte, error) {
	var v [4]int64
	for i := range v {
		x, n := binary.Varint(b)
		if n <= 0 {
			return tally{}, nil, errors.New("corrupt tally")
		}
		v[i], b = x, b[n:]
	}
	return tally{Requests: v[0], Prompt: v[1], Completion: v[2], Cost: money.Nanos(v[3])}, b, nil
}

// agg is a day aggregate: its totals and, per producer, the highest
// sequence number folded in (see committer).
type agg struct {
	t     tally
	marks map[string]uint64
}

// encodeAgg is the tally, then the marks sorted by producer: about 30
// bytes per producer that wrote to the aggregate that day.
func encodeAgg(a agg) []byte {
	b := encodeTally(a.t)
	b = binary.AppendUvarint(b, uint64(len(a.marks)))
	for _, p := range slices.Sorted(maps.Keys(a.marks)) {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		b = binary.AppendUvarint(b, a.marks[p])
	}
	return b
}

func decodeAgg(b []byte) (agg, error) {
	t, b, err := decodeTally(b)
	if err != nil || len(b) == 0 {
		return agg{t: t}, err
	}
	errCorrupt := errors.New("corrupt aggregate marks")
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return agg{}, errCorrupt
	}
	b = b[k:]
	a := agg{t: t, marks: make(map[string]uint64, n)}
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return agg{}, errCorrupt
		}
		p := string(b[k : k+int(l)])
		b = b[k+int(l):]
		seq, k := binary.Uvarint(b)
		if k <= 0 {
			return agg{}, errCorrupt
		}
		b = b[k:]
		a.marks[p] = seq
	}
	return a, nil
}

// span is a key range [from, to) to read; to == "" reads the one key.
type span struct{ from, to string }

func prefixSpan(p string) span { return span{p, clientv3.GetPrefixRangeEnd(p)} }

// readSpans reads many ranges in as few read-only Txns as the op limit
// allows; a read-only Txn is a linearizable read, not a raft write.
func (s *store) readSpans(ctx context.Context, spans []span) ([][]*mvccpb.KeyValue, error) {
	out := make([][]*mvccpb.KeyValue, 0, len(spans))
	for chunk := range slices.Chunk(spans, maxTxnOps) {
		ops := make([]clientv3.Op, len(chunk))
		for i, sp := range chunk {
			if sp.to == "" {
				ops[i] = clientv3.OpGet(sp.from)
			} else {
				ops[i] = clientv3.OpGet(sp.from, clientv3.WithRange(sp.to))
			}
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		for _, r := range resp.Responses {
			out = append(out, r.GetResponseRange().Kvs)
		}
	}
	return out, nil
}

// keyRows reads the month aggregates and the day aggregates from since on,
// for each key.
func (s *store) keyRows(ctx context.Context, keys []string, since time.Time) (map[string][]row, error) {
	spans := make([]span, 0, 2*len(keys))
	for _, k := range keys {
		p := aggPrefix(k)
		spans = append(spans, prefixSpan(p+"m/"), span{p + "d/" + dayStart(since).Format(dayLayout), clientv3.GetPrefixRangeEnd(p + "d/")})
	}
	res, err := s.readSpans(ctx, spans)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]row, len(keys))
	for i, kvs := range res {
		k := keys[i/2]
		for _, kv := range kvs {
			r, err := parseAgg(string(kv.Key), kv.Value)
			if err != nil {
				return nil, err
			}
			out[k] = append(out[k], r)
		}
	}
	return out, nil
}

// sumRows totals rows of one model ("" = every model) from since to now: day
// rows from since's day, month rows that start at or after since. A month
// already rolled up counts only if the period covers it whole; rollups keep
// the current and previous month as days, so every reset period is exact.
func sumRows(rows []row, model string, since time.Time) tally {
	var t tally
	since = dayStart(since)
	for _, r := range rows {
		if (model == "" || r.model == model) && !r.start.Before(since) {
			t.add(r.t)
		}
	}
	return t
}

// dayRows filters the day aggregates of one day.
func dayRows(rows []row, day time.Time) []row {
	var out []row
	for _, r := range rows {
		if !r.month && r.start.Equal(day) {
			out = append(out, r)
		}
	}
	return out
}

// workspaceKeys returns key id -> owner for every key with usage in ws.
func (s *store) workspaceKeys(ctx context.Context, ws string) (map[string]string, error) {
	p := wkPrefix(ws)
	out := map[string]string{}
	from := p
	for {
		resp, err := s.cli.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(p)), clientv3.WithLimit(1000))
		if err != nil {
			return nil, fmt.Errorf("%w: etcd read: %w", ErrUnavailable, err)
		}
		for _, kv := range resp.Kvs {
			out[strings.TrimPrefix(string(kv.Key), p)] = string(kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
