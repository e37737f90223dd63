package limitclient_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/etcdtest"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/internal/limitclient"
	"github.com/keygate/keygate/internal/ring"
	"github.com/keygate/keygate/pkg/auth"
)

const token = "test-service-token"

// counter is a limiter stand-in: each key admits limit items, and it
// remembers what it decided for each reservation.
type counter struct {
	limiterv1.UnimplementedLimiterServiceServer
	limit int

	// gate, when set, holds every stream message until it is closed (or
	// the stream ends).
	gate chan struct{}

	mu       sync.Mutex
	used     map[string]int
	decided  map[string]bool // by reservation id
	md       []metadata.MD   // of unary calls
	messages atomic.Int64    // stream messages received
	unary    atomic.Int64    // unary calls
	streams  atomic.Int64    // streams open now
}

func newCounter(limit int) *counter {
	return &counter{limit: limit, used: map[string]int{}, decided: map[string]bool{}}
}

var errBadKey = errors.New(`key "bad" is invalid`)

func (s *counter) decide(items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	for _, it := range items {
		if it.GetKey() == "bad" {
			return nil, errBadKey
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*limiterv1.CheckResult, len(items))
	for i, it := range items {
		ok := s.used[it.GetKey()] < s.limit
		if ok {
			s.used[it.GetKey()]++
		}
		s.decided[it.GetReservationId()] = ok
		out[i] = &limiterv1.CheckResult{Allowed: ok}
	}
	return out, nil
}

func authorized(ctx context.Context) error {
	if auth.BearerFromIncoming(ctx) != token {
		return status.Error(codes.Unauthenticated, "no service token")
	}
	return nil
}

func (s *counter) Check(ctx context.Context, req *limiterv1.CheckRequest) (*limiterv1.CheckResponse, error) {
	if err := authorized(ctx); err != nil {
		return nil, err
	}
	s.unary.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.md = append(s.md, md)
	s.mu.Unlock()
	res, err := s.decide(req.GetItems())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &limiterv1.CheckResponse{Results: res}, nil
}

func (s *counter) CheckStream(stream grpc.BidiStreamingServer[limiterv1.CheckStreamRequest, limiterv1.CheckStreamResponse]) error {
	if err := authorized(stream.Context()); err != nil {
		return err
	}
	s.streams.Add(1)
	defer s.streams.Add(-1)
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		s.messages.Add(1)
		if s.gate != nil {
			select {
			case <-s.gate:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		resp := &limiterv1.CheckStreamResponse{Sequence: req.GetSequence()}
		if res, err := s.decide(req.GetItems()); err != nil {
			resp.Error = err.Error()
		} else {
			resp.Results = res
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (s *counter) decision(id string) (bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok, found := s.decided[id]
	return ok, found
}

// serve runs srv on addr ("127.0.0.1:0" for a free port; a restart waits
// for its address to be free) until stopped.
func serve(t *testing.T, addr string, srv *counter) *grpctest.Server {
	t.Helper()
	return grpctest.Serve(t, func(r grpc.ServiceRegistrar) { limiterv1.RegisterLimiterServiceServer(r, srv) },
		grpctest.WithListener(grpctest.Listen(t, addr)))
}

type env struct {
	etcd *etcdtest.Cluster
}

func newEnv(t *testing.T) env {
	t.Helper()
	e := etcdtest.Start(t)
	return env{etcd: e}
}

// register makes addr a member and waits until the client sees it.
func (e *env) register(t *testing.T, id, addr string) *ring.Registration {
	t.Helper()
	reg, err := ring.Register(t.Context(), e.etcd.Client, ring.DefaultPrefix, ring.Member{ID: id, Addr: addr}, 0, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

func (e *env) client(t *testing.T) *limitclient.Client {
	t.Helper()
	lc, err := limitclient.New(t.Context(), limitclient.Config{Etcd: e.etcd.Client, DialOptions: []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.Token{Value: token}),
	}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, lc.Close()) })
	return lc
}

func item(id, key string) *limiterv1.CheckItem {
	return &limiterv1.CheckItem{ReservationId: id, Key: key, Model: "m", EstimatedTokens: 1}
}

// TestCheckConcurrent: concurrent callers share stream messages, and each
// gets exactly the answers the limiter gave its own reservations.
func TestCheckConcurrent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		callers int
		items   int // per caller, over as many keys
	}{
		{"one item per caller", 300, 1},
		{"three items per caller", 150, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			srv := newCounter(100)
			addr := serve(t, "127.0.0.1:0", srv).Addr
			e.register(t, "a", addr)
			lc := e.client(t)

			results := make([][]*limiterv1.CheckResult, tc.callers)
			var wg sync.WaitGroup
			for c := range tc.callers {
				wg.Go(func() {
					items := make([]*limiterv1.CheckItem, tc.items)
					for k := range items {
						items[k] = item(fmt.Sprintf("r%d-%d", c, k), fmt.Sprintf("key%d", k))
					}
					res, err := lc.Check(t.Context(), items)
					if err != nil {
						t.Errorf("caller %d: %v", c, err)
						return
					}
					results[c] = res
				})
			}
			wg.Wait()
			allowed := make([]int, tc.items)
			for c, res := range results {
				require.Len(t, res, tc.items)
				for k, r := range res {
					want, found := srv.decision(fmt.Sprintf("r%d-%d", c, k))
					require.True(t, found)
					require.Equal(t, want, r.GetAllowed(), "caller %d item %d", c, k)
					if r.GetAllowed() {
						allowed[k]++
					}
				}
			}
			for k := range allowed {
				require.Equal(t, 100, allowed[k], "key%d", k)
			}
			require.Less(t, srv.messages.Load(), int64(tc.callers), "callers were not coalesced")
			require.Zero(t, srv.unary.Load())
		})
	}
}

// TestCheckMetadataGoesUnary: a stream carries only the metadata it was
// opened with, so a call with its own (a limiter's hop header) is unary.
func TestCheckMetadataGoesUnary(t *testing.T) {
	e := newEnv(t)
	srv := newCounter(10)
	addr := serve(t, "127.0.0.1:0", srv).Addr
	e.register(t, "a", addr)
	lc := e.client(t)

	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-hop", "1")
	res, err := lc.Check(ctx, []*limiterv1.CheckItem{item("r1", "k")})
	require.NoError(t, err)
	require.True(t, res[0].GetAllowed())
	require.EqualValues(t, 1, srv.unary.Load())
	require.Zero(t, srv.messages.Load())
	srv.mu.Lock()
	defer srv.mu.Unlock()
	require.Equal(t, []string{"1"}, srv.md[0].Get("x-hop"))
}

// TestCheckBadItem: a message the limiter refuses fails no other caller;
// the caller with the bad item gets the limiter's own status code.
func TestCheckBadItem(t *testing.T) {
	e := newEnv(t)
	srv := newCounter(1000)
	addr := serve(t, "127.0.0.1:0", srv).Addr
	e.register(t, "a", addr)
	lc := e.client(t)

	var wg sync.WaitGroup
	for c := range 50 {
		wg.Go(func() {
			_, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item(fmt.Sprint("r", c), "k")})
			if err != nil {
				t.Errorf("good caller %d: %v", c, err)
			}
		})
	}
	_, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("bad", "bad")})
	wg.Wait()
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	_, found := srv.decision("bad")
	require.False(t, found)
}

// TestCheckContextEnds: a caller whose context ends returns at once, even
// while its message is unanswered.
func TestCheckContextEnds(t *testing.T) {
	e := newEnv(t)
	srv := newCounter(10)
	srv.gate = make(chan struct{})
	addr := serve(t, "127.0.0.1:0", srv).Addr
	e.register(t, "a", addr)
	lc := e.client(t)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := lc.Check(ctx, []*limiterv1.CheckItem{item("r1", "k")})
		done <- err
	}()
	require.Eventually(t, func() bool { return srv.messages.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	// The stream goes on: the held message is answered, the next as well.
	close(srv.gate)
	res, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("r2", "k")})
	require.NoError(t, err)
	require.True(t, res[0].GetAllowed())
	require.EqualValues(t, 2, srv.messages.Load())
}

// TestCheckStreamFails: callers in flight when the limiter stops get an
// error, not a hang; once it is back, a new stream serves them.
func TestCheckStreamFails(t *testing.T) {
	e := newEnv(t)
	srv := newCounter(1000)
	srv.gate = make(chan struct{})
	gs := serve(t, "127.0.0.1:0", srv)
	e.register(t, "a", gs.Addr)
	lc := e.client(t)

	const callers = 20
	errs := make(chan error, callers)
	for c := range callers {
		go func() {
			_, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item(fmt.Sprint("r", c), "k")})
			errs <- err
		}()
	}
	require.Eventually(t, func() bool { return srv.messages.Load() >= 1 }, 10*time.Second, 10*time.Millisecond)
	gs.Stop()
	for range callers {
		require.ErrorIs(t, <-errs, limitclient.ErrUnavailable)
	}

	srv2 := newCounter(1000)
	serve(t, gs.Addr, srv2)
	require.Eventually(t, func() bool {
		_, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("again", "k")})
		return err == nil
	}, 20*time.Second, 50*time.Millisecond)
	require.Positive(t, srv2.messages.Load())
}

// TestCheckDepartedMember: the stream to a member that leaves is closed.
func TestCheckDepartedMember(t *testing.T) {
	e := newEnv(t)
	srv := newCounter(10)
	addr := serve(t, "127.0.0.1:0", srv).Addr
	reg := e.register(t, "a", addr)
	lc := e.client(t)

	_, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("r1", "k")})
	require.NoError(t, err)
	require.EqualValues(t, 1, srv.streams.Load())
	require.NoError(t, reg.Close())
	require.Eventually(t, func() bool { return srv.streams.Load() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// TestCheckNoMembers: with no limiter registered, Check says so at once.
func TestCheckNoMembers(t *testing.T) {
	e := newEnv(t)
	lc := e.client(t)
	_, err := lc.Check(t.Context(), []*limiterv1.CheckItem{item("r1", "k")})
	require.ErrorIs(t, err, limitclient.ErrUnavailable)
}
