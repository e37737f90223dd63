// Package grpctest serves gRPC services for tests: a real grpc.Server on
// a free loopback TCP port (or on a listener the test brings), stopped at
// the end of the test, and client connections to it closed the same way.
//
//	s := grpctest.Serve(t, srv.Register)
//	client := keystorev1.NewKeystoreServiceClient(grpctest.Dial(t, s.Addr))
//
// A server restarted on its address takes a listener from Listen, which
// waits for the last one to release the port:
//
//	s.Stop()
//	s = grpctest.Serve(t, srv.Register, grpctest.WithListener(grpctest.Listen(t, s.Addr)))
package grpctest

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// listenWait is how long Listen waits for an address in use to be free.
const listenWait = 5 * time.Second

// Server is a gRPC server serving for one test.
type Server struct {
	// Addr is the address it listens on, host:port.
	Addr string

	srv    *grpc.Server
	served chan struct{} // closed when Serve has returned
}

// Option changes how Serve starts a server.
type Option func(*config)

type config struct {
	lis  net.Listener
	opts []grpc.ServerOption
}

// WithListener serves on lis instead of a new loopback port: a listener
// from Listen on a fixed address, or one whose address the service must
// know before it is registered (a member advertising itself).
func WithListener(lis net.Listener) Option {
	return func(c *config) { c.lis = lis }
}

// WithServerOptions passes opts to grpc.NewServer: interceptors, TLS
// credentials, limits.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(c *config) { c.opts = append(c.opts, opts...) }
}

// Serve starts a gRPC server with the services register adds, on a free
// loopback port unless WithListener gives one, and stops it at the end of
// the test.
func Serve(tb testing.TB, register func(grpc.ServiceRegistrar), opts ...Option) *Server {
	tb.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.lis == nil {
		c.lis = Listen(tb, "127.0.0.1:0")
	}
	s := &Server{Addr: c.lis.Addr().String(), srv: grpc.NewServer(c.opts...), served: make(chan struct{})}
	register(s.srv)
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(c.lis)
	}()
	tb.Cleanup(s.Stop)
	return s
}

// Stop stops the server at once, as a crash would look to its clients:
// connections are cut and calls in flight fail. It returns when the
// listener is closed, so the address can be served again. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	s.srv.Stop()
	<-s.served
}

// GracefulStop stops the server as a process shutting down would: it
// takes no new calls and lets those in flight finish for up to grace,
// then stops at once as Stop.
func (s *Server) GracefulStop(grace time.Duration) {
	done := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.srv.Stop()
		<-done
	}
	<-s.served
}

// Listen listens on the TCP address addr ("127.0.0.1:0" for a free port)
// and closes the listener at the end of the test. While addr is in use it
// tries again for up to five seconds: a server restarted on its address
// comes back once the last one has let go of it.
func Listen(tb testing.TB, addr string) net.Listener {
	tb.Helper()
	deadline := time.Now().Add(listenWait)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil {
			tb.Cleanup(func() { _ = lis.Close() })
			return lis
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			tb.Fatalf("grpctest: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Dial returns a client connection to addr without transport security,
// closed at the end of the test. opts come after the insecure credentials
// and may replace them.
func Dial(tb testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		tb.Fatalf("grpctest: dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}
