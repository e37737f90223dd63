package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/keygate/keygate/pkg/auth"
)

// defaultToken sends the service token on calls that carry no credential of
// their own. A service acting for a caller forwards the caller's credential
// (auth.ForwardIncoming), which this leaves untouched, so it never elevates
// a caller to the service's rights.
func defaultToken(token string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(withDefault(ctx, token), method, req, reply, cc, opts...)
	}
}

func defaultTokenStream(token string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(withDefault(ctx, token), desc, cc, method, opts...)
	}
}

func withDefault(ctx context.Context, token string) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(auth.Header)) > 0 {
		return ctx
	}
	return auth.WithBearer(ctx, token)
}
