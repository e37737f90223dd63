package grpctest

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// health answers Check with SERVING; a call for service "hold" waits
// until release is closed or the call ends, and tells held when it starts.
type health struct {
	healthpb.UnimplementedHealthServer
	held    chan struct{}
	release chan struct{}
}

func newHealth() *health {
	return &health{held: make(chan struct{}, 1), release: make(chan struct{})}
}

func (h *health) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.GetService() == "hold" {
		h.held <- struct{}{}
		select {
		case <-h.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (h *health) register(r grpc.ServiceRegistrar) { healthpb.RegisterHealthServer(r, h) }

func check(ctx context.Context, cc *grpc.ClientConn, service string) error {
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	return err
}

// A served service answers a dialled client, through the server options.
func TestServeAndDial(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	count := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		calls.Add(1)
		return next(ctx, req)
	}
	s := Serve(t, newHealth().register, WithServerOptions(grpc.UnaryInterceptor(count)))
	host, _, err := net.SplitHostPort(s.Addr)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.NoError(t, check(t.Context(), Dial(t, s.Addr), ""))
	require.EqualValues(t, 1, calls.Load())
}

// The end of the test stops the server and closes its listener.
func TestCleanupStops(t *testing.T) {
	t.Parallel()
	var s *Server
	t.Run("serve", func(t *testing.T) { s = Serve(t, newHealth().register) })
	select {
	case <-s.served:
	default:
		t.Fatal("the server still serves after its test")
	}
	require.True(t, refused(s.Addr), "the listener is closed")
}

// refused reports whether a TCP connection to addr is refused.
func refused(addr string) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}

// A stopped server fails its clients at once; a new one on the same
// address serves again.
func TestStopAndRestartOnAddress(t *testing.T) {
	t.Parallel()
	h := newHealth()
	s := Serve(t, h.register)
	cc := Dial(t, s.Addr)
	require.NoError(t, check(t.Context(), cc, ""))
	s.Stop()
	require.Equal(t, codes.Unavailable, status.Code(check(t.Context(), cc, "")))
	s.Stop() // a second Stop does nothing

	again := Serve(t, h.register, WithListener(Listen(t, s.Addr)))
	require.Equal(t, s.Addr, again.Addr)
	require.NoError(t, check(t.Context(), Dial(t, again.Addr), ""))
}

// Listen waits for an address in use to be let go.
func TestListenWaitsForAddress(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := busy.Addr().String()
	time.AfterFunc(50*time.Millisecond, func() { _ = busy.Close() })
	lis := Listen(t, addr)
	require.Equal(t, addr, lis.Addr().String())
}

// GracefulStop lets a call in flight finish within the grace period and
// cuts it after.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		grace    time.Duration
		finishes bool
	}{
		{"call ends within grace", time.Minute, true},
		{"grace runs out", 10 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHealth()
			s := Serve(t, h.register)
			cc := Dial(t, s.Addr)
			result := make(chan error, 1)
			go func() { result <- check(t.Context(), cc, "hold") }()
			<-h.held
			stopped := make(chan struct{})
			go func() {
				s.GracefulStop(tc.grace)
				close(stopped)
			}()
			// The listener closes first; the call is still held.
			require.Eventually(t, func() bool { return refused(s.Addr) }, 5*time.Second, time.Millisecond)
			if tc.finishes {
				select {
				case <-stopped:
					t.Fatal("GracefulStop returned with a call in flight")
				default:
				}
				close(h.release)
				require.NoError(t, <-result)
			} else {
				require.Equal(t, codes.Unavailable, status.Code(<-result))
			}
			<-stopped
			require.Equal(t, codes.Unavailable, status.Code(check(t.Context(), cc, "")), "no new calls")
		})
	}
}
