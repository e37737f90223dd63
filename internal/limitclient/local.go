package limitclient

import (
	"context"

	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/pkg/auth"
)

// Local is a limiter replica running in the caller's own process: the
// items its address owns are decided by a direct call rather than a gRPC
// round trip over loopback. Everything else (ownership, failover, the
// replica's own forwarding) is as for any member.
type Local struct {
	// Addr is the replica's advertised address: its member ID.
	Addr string
	// Server is the replica.
	Server LocalServer
	// Token is the service token the replica expects; "" for none.
	Token string
	// Tracer records a span for each direct call of a sampled request, in
	// place of the gRPC client and server spans; nil = none.
	Tracer trace.TracerProvider
}

// LocalServer is the part of the limiter service a Local replica serves.
type LocalServer interface {
	Check(context.Context, *limiterv1.CheckRequest) (*limiterv1.CheckResponse, error)
	Settle(context.Context, *limiterv1.SettleRequest) (*limiterv1.SettleResponse, error)
	Release(context.Context, *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error)
	Explain(context.Context, *limiterv1.ExplainRequest) (*limiterv1.ExplainResponse, error)
}

// localClient calls a LocalServer as a LimiterServiceClient would call the
// replica: the call's outgoing metadata (a hop header) and the service
// token arrive as the server's incoming metadata.
type localClient struct {
	srv LocalServer
	// creds is the incoming metadata of a call that carries none of its
	// own: the service token, built once and only ever read.
	creds  metadata.MD
	tracer trace.Tracer // nil = none
}

func newLocalClient(l *Local) localClient {
	return localClient{srv: l.Server, creds: auth.BearerMD(l.Token)}
}

var _ limiterv1.LimiterServiceClient = localClient{}

func (l localClient) incoming(ctx context.Context) context.Context {
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok {
		return metadata.NewIncomingContext(ctx, l.creds) // the common case: nothing to copy
	}
	md = md.Copy()
	for k, v := range l.creds {
		md[k] = v // the service token, in place of any the call carries
	}
	return metadata.NewIncomingContext(ctx, md)
}

// direct runs one call, in a span of its own when the request's
// trace is sampled.
func direct[Req, Resp any](ctx context.Context, l localClient, method string, do func(context.Context, Req) (Resp, error), in Req) (Resp, error) {
	if l.tracer != nil && trace.SpanContextFromContext(ctx).IsSampled() {
		var span trace.Span
		ctx, span = l.tracer.Start(ctx, "keygate.limiter.v1.LimiterService/"+method+" (in-process)")
		defer span.End()
		resp, err := do(l.incoming(ctx), in)
		if err != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
		return resp, err
	}
	return do(l.incoming(ctx), in)
}

func (l localClient) Check(ctx context.Context, in *limiterv1.CheckRequest, _ ...grpc.CallOption) (*limiterv1.CheckResponse, error) {
	return direct(ctx, l, "Check", l.srv.Check, in)
}

func (l localClient) Settle(ctx context.Context, in *limiterv1.SettleRequest, _ ...grpc.CallOption) (*limiterv1.SettleResponse, error) {
	return direct(ctx, l, "Settle", l.srv.Settle, in)
}

func (l localClient) Release(ctx context.Context, in *limiterv1.ReleaseRequest, _ ...grpc.CallOption) (*limiterv1.ReleaseResponse, error) {
	return direct(ctx, l, "Release", l.srv.Release, in)
}

func (l localClient) Explain(ctx context.Context, in *limiterv1.ExplainRequest, _ ...grpc.CallOption) (*limiterv1.ExplainResponse, error) {
	return direct(ctx, l, "Explain", l.srv.Explain, in)
}

// The replicas' own calls never go to a Local replica: a replica does not
// call itself.
var errLocal = status.Error(codes.Unimplemented, "limitclient: not served by the in-process limiter")

func (localClient) CheckStream(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[limiterv1.CheckStreamRequest, limiterv1.CheckStreamResponse], error) {
	return nil, errLocal
}

func (localClient) Handover(context.Context, *limiterv1.HandoverRequest, ...grpc.CallOption) (*limiterv1.HandoverResponse, error) {
	return nil, errLocal
}

func (localClient) Adopt(context.Context, *limiterv1.AdoptRequest, ...grpc.CallOption) (*limiterv1.AdoptResponse, error) {
	return nil, errLocal
}

func (localClient) Replicate(context.Context, *limiterv1.ReplicateRequest, ...grpc.CallOption) (*limiterv1.ReplicateResponse, error) {
	return nil, errLocal
}
