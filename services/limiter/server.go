package limiter

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitclient"
	"github.com/keygate/keygate/internal/rpcerr"
)

var _ limiterv1.LimiterServiceServer = (*Server)(nil)

// Check implements LimiterService.Check.
func (s *Server) Check(ctx context.Context, req *limiterv1.CheckRequest) (*limiterv1.CheckResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	// A unary response is marshalled after this returns, with no hook to
	// learn when: its results cannot be pooled.
	var sl slab
	res, err := s.check(ctx, req.GetItems(), isHop(ctx), &sl)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &limiterv1.CheckResponse{Results: res}, nil
}

// CheckStream implements LimiterService.CheckStream: one response per
// request, in order. A batch that cannot be decided gets its error in the
// response and the stream goes on.
func (s *Server) CheckStream(stream grpc.BidiStreamingServer[limiterv1.CheckStreamRequest, limiterv1.CheckStreamResponse]) error {
	ctx := stream.Context()
	if err := s.authorize(ctx); err != nil {
		return s.toStatus(ctx, err)
	}
	hop := isHop(ctx)
	req := &limiterv1.CheckStreamRequest{}
	resp := &limiterv1.CheckStreamResponse{}
	// Send marshals resp before it returns, so the stream reuses its
	// messages and result storage from one batch to the next.
	var sl slab
	for {
		req.Reset()
		if err := stream.RecvMsg(req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		resp.Reset()
		resp.Sequence = req.GetSequence()
		res, err := s.check(ctx, req.GetItems(), hop, &sl)
		if err != nil {
			resp.Error = status.Convert(s.toStatus(ctx, err)).Message()
		} else {
			resp.Results = res
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Settle implements LimiterService.Settle.
func (s *Server) Settle(ctx context.Context, req *limiterv1.SettleRequest) (*limiterv1.SettleResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	unknown, err := s.settle(ctx, req.GetSettlements(), isHop(ctx))
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &limiterv1.SettleResponse{Unknown: unknown}, nil
}

// Release implements LimiterService.Release.
func (s *Server) Release(ctx context.Context, req *limiterv1.ReleaseRequest) (*limiterv1.ReleaseResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	unknown, err := s.release(ctx, req.GetReleases(), isHop(ctx))
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &limiterv1.ReleaseResponse{Unknown: unknown}, nil
}

// toStatus is where the limiter's errors become gRPC status codes; the
// shared ones (credential, caller gone, a peer's status, anything
// unexpected, logged with its cause) go through rpcerr.
func (s *Server) toStatus(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrSeed), errors.Is(err, limitclient.ErrUnavailable):
		s.log.WarnContext(ctx, "limiter cannot decide", slog.Any("error", err))
		return status.Error(codes.Unavailable, err.Error())
	default:
		return rpcerr.Status(ctx, s.log, "limiter", err)
	}
}
