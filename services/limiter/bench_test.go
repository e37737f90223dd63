package limiter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/internal/grpctest"
)

// loadRun is how long each measured load runs; each benchmark iteration
// runs the echo ceiling and the limiter once each.
const loadRun = 400 * time.Millisecond

func benchPolicy() *typev1.Policy {
	const big = 1 << 40
	return &typev1.Policy{
		GlobalLimits: &typev1.Limits{Rpm: big, Rpd: big, Tpm: big, Tpd: big},
		ModelLimits:  []*typev1.ModelLimits{{Model: "mock-small", Limits: &typev1.Limits{Rpm: big, Tpm: big}}},
		Budget:       &typev1.Budget{AmountUsd: "1000000.00", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY},
	}
}

func benchItems(batch, worker int) [][]*limiterv1.CheckItem {
	return benchItemsOf(batch, worker, false)
}

// benchItemsOf spreads items over 1,000 keys; with levels, the keys are
// in 10 workspaces of 10 members each, every level with the key's limits.
func benchItemsOf(batch, worker int, levels bool) [][]*limiterv1.CheckItem {
	return benchItemsShaped(batch, worker, levels, false)
}

// benchItemsShaped is benchItemsOf; typical gives the levels the limits
// organisations usually set rather than the key's full set.
func benchItemsShaped(batch, worker int, levels, typical bool) [][]*limiterv1.CheckItem {
	p := benchPolicy()
	sets := make([][]*limiterv1.CheckItem, 64)
	for s := range sets {
		for i := range batch {
			n := (worker*64 + s*batch + i) % 1000
			it := &limiterv1.CheckItem{Key: "key-" + strconv.Itoa(n), Model: "mock-small", Policy: p, EstimatedTokens: 100, EstimatedCostMicros: 20}
			if levels {
				it.Workspace, it.Member = "ws-"+strconv.Itoa(n%10), "member-"+strconv.Itoa(n%100)
				it.Levels = []*limiterv1.LevelPolicy{
					{Level: typev1.LimitLevel_LIMIT_LEVEL_MEMBER, Policy: p},
					{Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Policy: p},
				}
			}
			if levels && typical {
				// What organisations set: a daily request limit per member,
				// a monthly budget and a daily token limit per workspace.
				const big = 1 << 40
				it.Levels[0].Policy = &typev1.Policy{GlobalLimits: &typev1.Limits{Rpd: big}}
				it.Levels[1].Policy = &typev1.Policy{GlobalLimits: &typev1.Limits{Tpd: big},
					Budget: &typev1.Budget{AmountUsd: "1000000.00", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY}}
			}
			sets[s] = append(sets[s], it)
		}
	}
	return sets
}

// BenchmarkInProcessCheck is one decision through the service layer
// (validation, window, result messages) without gRPC: "fresh" allocates
// the results as a unary call does, "reused" reuses them as a stream does.
func BenchmarkInProcessCheck(b *testing.B) {
	s, err := New(context.Background(), Config{Clock: clock.Real{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for _, c := range []struct {
		name          string
		reuse, levels bool
	}{{"fresh", false, false}, {"reused", true, false}, {"levels/fresh", false, true}, {"levels/reused", true, true}, {"typical-levels/reused", true, true}} {
		reuse, items := c.reuse, benchItemsShaped(1, 0, c.levels, strings.HasPrefix(c.name, "typical"))[0]
		b.Run(c.name, func(b *testing.B) {
			var sl slab
			b.ReportAllocs()
			for b.Loop() {
				if !reuse {
					sl = slab{}
				}
				if _, err := s.check(ctx, items, false, &sl); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// echo is the ceiling: a plain gRPC service with the limiter's message
// shape that answers canned results without deciding anything.
type echo struct{ results []*limiterv1.CheckResult }

func (e *echo) respond(n int) []*limiterv1.CheckResult { return e.results[:n] }

func newEcho() *echo {
	s, _ := New(context.Background(), Config{})
	defer s.Close()
	res, _ := s.check(context.Background(), benchItems(100, 0)[0], false, &slab{})
	return &echo{results: res}
}

func (e *echo) desc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "keygate.bench.Echo",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Check",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				req := &limiterv1.CheckRequest{}
				if err := dec(req); err != nil {
					return nil, err
				}
				return &limiterv1.CheckResponse{Results: e.respond(len(req.Items))}, nil
			},
		}},
		Streams: []grpc.StreamDesc{{
			StreamName: "CheckStream", ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, stream grpc.ServerStream) error {
				for {
					req := &limiterv1.CheckStreamRequest{}
					if err := stream.RecvMsg(req); err != nil {
						if errors.Is(err, io.EOF) {
							return nil
						}
						return err
					}
					if err := stream.SendMsg(&limiterv1.CheckStreamResponse{Sequence: req.Sequence, Results: e.respond(len(req.Items))}); err != nil {
						return err
					}
				}
			},
		}},
	}
}

type target struct {
	cc     *grpc.ClientConn
	method string
	stream string
	// levels sends items with a member and a workspace level.
	levels bool
}

// rawCodec sends pre-marshalled requests and reads responses as opaque
// bytes: the load generator shares the two cores with the server under
// test, so it spends nothing on protobuf in the measured loop. It names
// itself "proto" so that servers decode with their protobuf codec.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*int) = data.Len()
	return nil
}

func (rawCodec) Name() string { return "proto" }

var raw = grpc.ForceCodecV2(rawCodec{})

type result struct {
	decisions float64 // per second
	p50, p99  time.Duration
}

// encode pre-marshals each batch as the message of a unary or stream call.
func encode(b *testing.B, sets [][]*limiterv1.CheckItem, useStream bool) [][]byte {
	out := make([][]byte, len(sets))
	for i, items := range sets {
		var m proto.Message = &limiterv1.CheckRequest{Items: items}
		if useStream {
			m = &limiterv1.CheckStreamRequest{Sequence: uint64(i), Items: items}
		}
		var err error
		if out[i], err = proto.Marshal(m); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// verify decodes one full answer, outside the measured loop, to check the
// target answers every item.
func verify(ctx context.Context, tg target, items []*limiterv1.CheckItem, useStream bool) error {
	var n int
	if useStream {
		st, err := tg.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, tg.stream)
		if err != nil {
			return err
		}
		defer func() { _ = st.CloseSend() }()
		if err := st.SendMsg(&limiterv1.CheckStreamRequest{Items: items}); err != nil {
			return err
		}
		resp := &limiterv1.CheckStreamResponse{}
		if err := st.RecvMsg(resp); err != nil {
			return err
		}
		n = len(resp.GetResults())
	} else {
		resp := &limiterv1.CheckResponse{}
		if err := tg.cc.Invoke(ctx, tg.method, &limiterv1.CheckRequest{Items: items}, resp); err != nil {
			return err
		}
		n = len(resp.GetResults())
	}
	if n != len(items) {
		return fmt.Errorf("%d results for %d items", n, len(items))
	}
	return nil
}

// load runs inflight workers for loadRun, each with one call outstanding
// at a time (unary, or a request/response on its own stream).
func load(b *testing.B, tg target, inflight, batch int, useStream bool) result {
	ctx := context.Background()
	lat := make([][]time.Duration, inflight)
	msgs := make([][][]byte, inflight)
	for w := range inflight {
		sets := benchItemsOf(batch, w, tg.levels)
		if err := verify(ctx, tg, sets[0], useStream); err != nil {
			b.Fatal(err)
		}
		msgs[w] = encode(b, sets, useStream)
	}
	deadline := time.Now().Add(loadRun)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range inflight {
		wg.Go(func() {
			var st grpc.ClientStream
			if useStream {
				var err error
				st, err = tg.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, tg.stream, raw)
				if err != nil {
					b.Error(err)
					return
				}
				defer func() { _ = st.CloseSend() }()
			}
			l := make([]time.Duration, 0, 1<<14)
			var got int
			for i := 0; ; i++ {
				t0 := time.Now()
				if t0.After(deadline) {
					break
				}
				msg := &msgs[w][i%len(msgs[w])]
				if useStream {
					if err := st.SendMsg(msg); err != nil {
						b.Error(err)
						return
					}
					if err := st.RecvMsg(&got); err != nil {
						b.Error(err)
						return
					}
				} else if err := tg.cc.Invoke(ctx, tg.method, msg, &got, raw); err != nil {
					b.Error(err)
					return
				}
				l = append(l, time.Since(t0))
			}
			lat[w] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return result{}
	}
	return result{
		decisions: float64(len(all)*batch) / elapsed.Seconds(),
		p50:       all[len(all)/2],
		p99:       all[len(all)*99/100],
	}
}

// BenchmarkGRPC measures decisions/s and latency over loopback against a
// plain echo server with the same messages, in the same run.
func BenchmarkGRPC(b *testing.B) {
	e := newEcho()
	echo := grpctest.Serve(b, func(r grpc.ServiceRegistrar) { r.RegisterService(e.desc(), e) })
	s, err := New(context.Background(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	lim := grpctest.Serve(b, s.Register)
	echoT := target{cc: grpctest.Dial(b, echo.Addr), method: "/keygate.bench.Echo/Check", stream: "/keygate.bench.Echo/CheckStream"}
	limT := target{cc: grpctest.Dial(b, lim.Addr), method: "/keygate.limiter.v1.LimiterService/Check", stream: "/keygate.limiter.v1.LimiterService/CheckStream"}
	cases := []struct {
		name      string
		inflight  int
		batch     int
		useStream bool
	}{
		{"unary/batch=1/inflight=1", 1, 1, false},
		{"unary/batch=1/inflight=10", 10, 1, false},
		{"unary/batch=1/inflight=50", 50, 1, false},
		{"unary/batch=10/inflight=1", 1, 10, false},
		{"unary/batch=10/inflight=10", 10, 10, false},
		{"unary/batch=10/inflight=50", 50, 10, false},
		{"stream/batch=1/streams=50", 50, 1, true},
		{"stream/batch=10/streams=10", 10, 10, true},
		{"stream/batch=10/streams=50", 50, 10, true},
		{"stream/batch=100/streams=10", 10, 100, true},
		{"levels/unary/batch=1/inflight=10", 10, 1, false},
		{"levels/stream/batch=10/streams=10", 10, 10, true},
		{"levels/stream/batch=100/streams=10", 10, 100, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var ceil, lim result
			limT := limT
			limT.levels = strings.HasPrefix(c.name, "levels/")
			for range b.N {
				ce := load(b, echoT, c.inflight, c.batch, c.useStream)
				li := load(b, limT, c.inflight, c.batch, c.useStream)
				ceil.decisions += ce.decisions / float64(b.N)
				lim.decisions += li.decisions / float64(b.N)
				ceil.p99, lim.p50, lim.p99 = max(ceil.p99, ce.p99), max(lim.p50, li.p50), max(lim.p99, li.p99)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(lim.decisions, "decisions/s")
			b.ReportMetric(ceil.decisions, "echo-decisions/s")
			b.ReportMetric(lim.decisions/ceil.decisions, "ratio-of-echo")
			b.ReportMetric(float64(lim.p50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(lim.p99.Microseconds()), "p99-µs")
			b.ReportMetric(float64(ceil.p99.Microseconds()), "echo-p99-µs")
		})
	}
}

// BenchmarkTakeover is the time a new owner needs to take over 10,000
// keys: the first decision for each, seeded from a usage service over
// gRPC in batched GetTotals calls, 500 items per Check.
func BenchmarkTakeover(b *testing.B) {
	l := &ledger{totals: map[string]*usagev1.Totals{}}
	for i := range 10_000 {
		l.totals["key-"+strconv.Itoa(i)] = &usagev1.Totals{Key: "key-" + strconv.Itoa(i), RequestsToday: 3}
	}
	usage := grpctest.Serve(b, func(r grpc.ServiceRegistrar) { usagev1.RegisterUsageServiceServer(r, l) })
	cc := grpctest.Dial(b, usage.Addr)
	p := benchPolicy()
	var batches [][]*limiterv1.CheckItem
	for i := 0; i < 10_000; i += 500 {
		var items []*limiterv1.CheckItem
		for j := i; j < i+500; j++ {
			items = append(items, &limiterv1.CheckItem{Key: "key-" + strconv.Itoa(j), Model: "mock-small", Policy: p, EstimatedTokens: 10})
		}
		batches = append(batches, items)
	}
	var total time.Duration
	for b.Loop() {
		s, err := New(context.Background(), Config{Usage: usagev1.NewUsageServiceClient(cc)})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for _, items := range batches {
			wg.Go(func() {
				if _, err := s.check(context.Background(), items, false, &slab{}); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		total += time.Since(start)
		_ = s.Close()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/10k-keys")
}
