package grpctest

import (
	"context"
	"net"
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
	seen := make(chan string, 1)
	intercept := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		seen <- info.FullMethod
		return next(ctx, req)
	}
	s := Serve(t, newHealth().register, WithServerOptions(grpc.UnaryInterceptor(intercept)))
	host, _, err := net.SplitHostPort(s.Addr)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.NoError(t, check(t.Context(), Dial(t, s.Addr), ""))
	require.Equal(t, healthpb.Health_Check_FullMethodName, <-seen)
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

// heldCall serves a health service and starts a call it holds until
// h.release is closed; the call's error comes on result.
func heldCall(t *testing.T) (h *health, s *Server, cc *grpc.ClientConn, result <-chan error) {
	t.Helper()
	h = newHealth()
	s = Serve(t, h.register)
	cc = Dial(t, s.Addr)
	res := make(chan error, 1)
	go func() { res <- check(t.Context(), cc, "hold") }()
	<-h.held
	return h, s, cc, res
}

// GracefulStop refuses new calls at once and lets a call in flight finish.
func TestGracefulStopWaitsForCalls(t *testing.T) {
	t.Parallel()
	h, s, _, result := heldCall(t)
	stopped := make(chan struct{})
	go func() {
		s.GracefulStop(time.Minute)
		close(stopped)
	}()
	require.Eventually(t, func() bool { return refused(s.Addr) }, 5*time.Second, time.Millisecond)
	select {
	case <-stopped:
		t.Fatal("GracefulStop returned with a call in flight")
	default:
	}
	close(h.release)
	require.NoError(t, <-result)
	<-stopped
}

// Past its grace period, GracefulStop cuts the calls in flight.
func TestGracefulStopCutsAfterGrace(t *testing.T) {
	t.Parallel()
	_, s, cc, result := heldCall(t)
	s.GracefulStop(10 * time.Millisecond)
	require.Equal(t, codes.Unavailable, status.Code(<-result))
	require.Equal(t, codes.Unavailable, status.Code(check(t.Context(), cc, "")), "no new calls")
}
